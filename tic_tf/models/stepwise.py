"""A `build_model` network run a chunk of timesteps at a time, as the paper's reference code
runs it one timestep at a time.

`model(images)` computes each layer over all timesteps at once (time folded into the batch),
so in its graph every later tensor depends on every timestep, and a gradient of a loss on
timesteps 1..t still runs through all T. Run in chunks, what a chunk computes depends on it
and the chunks before alone, so that gradient never touches a later chunk: the Fisher
estimator's T backward passes then cover about half the timesteps of T full ones.
"""
import functools

import keras
import tensorflow as tf

from tic_tf.models.batch_norm import TemporalBatchNorm
from tic_tf.models.graph import run_layers
from tic_tf.models.layers import RepeatOverTime
from tic_tf.neurons import LIF


def run_timesteps(model, images, substitute=None, record=(), chunk=1):
    """`model(images)` in inference mode, computed `chunk` timesteps at a time.

    substitute: {layer: fn(inputs, first_timestep)}, called for each chunk instead of the
    layer, with its `[batch, chunk, ...]` input for the chunk's timesteps (the last chunk
    may be shorter); first_timestep counts from 0.
    record: layers whose (input, output) tensors are returned for each chunk.
    The stem (the layers before `RepeatOverTime`) runs once: its tensors, recorded ones
    included, are the same for every chunk.
    Returns (the chunks' logits `[batch, chunk, classes]`, the chunks' lists of recorded
    (input, output) pairs).
    """
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    stem = layers[:next(i for i, layer in enumerate(layers)
                        if isinstance(layer, RepeatOverTime)) + 1]
    timesteps = int(model.output.shape[1])
    membranes = {}  # LIF layer name -> membrane kept after the previous chunk
    logits, records, stem_tensors = [], [], []
    for first in range(0, timesteps, chunk):
        length = min(chunk, timesteps - first)
        hooks = {layer: _lif_step(layer, membranes) for layer in layers
                 if isinstance(layer, LIF)}
        hooks.update({layer: _batch_norm_step(layer, first) for layer in layers
                      if isinstance(layer, TemporalBatchNorm)})
        hooks.update({layer: functools.partial(fn, first_timestep=first)
                      for layer, fn in (substitute or {}).items()})
        if first > 0:  # the stem's tensors of the first chunk
            hooks.update({layer: lambda *_, tensors=tensors: tensors[1]
                          for layer, tensors in zip(stem, stem_tensors)})
        # The repeat (direct coding), for this chunk's timesteps.
        image = stem_tensors[-1][0] if first > 0 else None
        hooks[stem[-1]] = lambda inputs, image=image, length=length: tf.repeat(
            (inputs if image is None else image)[:, None], length, axis=1)
        watched = [*record, *(layer for layer in stem if layer not in record)]
        output, recorded = run_layers(model, images, substitute=hooks, record=watched)
        if first == 0:
            pairs = {id(layer): pair for layer, pair in zip(watched, recorded)}
            stem_tensors = [pairs[id(layer)] for layer in stem]
        logits.append(output)
        records.append(recorded[:len(record)])
    return logits, records


def _lif_step(layer, membranes):
    """A LIF layer over one chunk, its membrane carried in `membranes`."""
    def step(inputs):
        current = tf.cast(inputs, layer.compute_dtype)
        membrane = membranes.get(layer.name, tf.zeros_like(current[:, 0], tf.float32))
        spikes, membranes[layer.name] = layer.run_from(current, membrane)
        return spikes
    return step


def _batch_norm_step(layer, first):
    """A per-timestep batch-norm in inference mode over a chunk from timestep `first`: those
    timesteps' moving statistics (and for "bntt" scales and offsets)."""
    return lambda inputs: tf.cast(layer.normalize_in_inference(tf.cast(inputs, tf.float32),
                                                               first), layer.compute_dtype)
