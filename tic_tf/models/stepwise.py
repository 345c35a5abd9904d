"""A `build_model` network run one timestep at a time, as the paper's reference code runs it.

`model(images)` computes each layer over all timesteps at once (time folded into the batch),
so in its graph every later tensor depends on every timestep, and a gradient of a loss on
timesteps 1..t still runs through all T. Run one timestep at a time, what timestep t computes
depends on timesteps <= t alone, so that gradient never touches a later timestep: the Fisher
estimator's T backward passes then cost 1 + 2 + ... + T timesteps instead of T x T.
"""
import functools

import keras
import tensorflow as tf

from tic_tf.models.batch_norm import TemporalBatchNorm
from tic_tf.models.graph import run_layers
from tic_tf.models.layers import RepeatOverTime
from tic_tf.neurons import LIF


def run_timesteps(model, images, substitute=None, record=()):
    """`model(images)` in inference mode, computed one timestep at a time.

    substitute: {layer: fn(inputs, timestep)}, called at each timestep (counted from 0)
    instead of the layer, with its `[batch, 1, ...]` input for that timestep.
    record: layers whose (input, output) tensors are returned for each timestep.
    The stem (the layers before `RepeatOverTime`) runs once: its tensors, recorded ones
    included, are the same at every timestep.
    Returns (T logits `[batch, 1, classes]`, T lists of recorded (input, output) pairs).
    """
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    stem = layers[:next(i for i, layer in enumerate(layers)
                        if isinstance(layer, RepeatOverTime)) + 1]
    membranes = {}  # LIF layer name -> membrane after the previous timestep
    logits, records, stem_outputs = [], [], []
    for timestep in range(int(model.output.shape[1])):
        hooks = {layer: _lif_step(layer, membranes) for layer in layers
                 if isinstance(layer, LIF)}
        hooks.update({layer: _batch_norm_step(layer, timestep) for layer in layers
                      if isinstance(layer, TemporalBatchNorm)})
        hooks.update({layer: functools.partial(fn, timestep=timestep)
                      for layer, fn in (substitute or {}).items()})
        if timestep == 0:
            hooks[stem[-1]] = lambda inputs: inputs[:, None]  # the repeat, for one timestep
        else:
            hooks.update({layer: lambda *_, output=output: output
                          for layer, output in zip(stem, stem_outputs)})
        watched = [*record, *(layer for layer in stem if layer not in record)]
        output, recorded = run_layers(model, images, substitute=hooks, record=watched)
        if timestep == 0:
            outputs = {id(layer): pair[1] for layer, pair in zip(watched, recorded)}
            stem_outputs = [outputs[id(layer)] for layer in stem]
        logits.append(output)
        records.append(recorded[:len(record)])
    return logits, records


def _lif_step(layer, membranes):
    """One timestep of a LIF layer (in float32), its membrane carried in `membranes`."""
    def step(inputs):
        current = tf.cast(inputs, layer.compute_dtype)
        membrane = membranes.get(layer.name, tf.zeros_like(current[:, 0]))
        spikes, membranes[layer.name] = layer.run_from(current, membrane)
        return spikes
    return step


def _batch_norm_step(layer, timestep):
    """A per-timestep batch-norm in inference mode at one timestep: that timestep's moving
    statistics (and for "bntt" scale and offset)."""
    return lambda inputs: tf.cast(layer.normalize_in_inference(tf.cast(inputs, tf.float32),
                                                               timestep), layer.compute_dtype)
