"""Independent computations the exact Fisher estimator is tested against: per-sample
gradient tapes, the reference code's batch-mean formula, and a model whose inference-mode
batch-norm equals another's batch statistics."""
import copy

import keras
import numpy as np
import tensorflow as tf

from tic_tf.fisher import block_of, temporal_fisher
from tic_tf.losses import per_timestep_losses
from tic_tf.models import TemporalBatchNorm, build_model

STEPS = 3


def active_model(arch="resnet19", shape=(28, 28, 1), seed=0, batch_norm="per_timestep",
                 **neuron):
    """A tiny model whose layers fire, with non-trivial batch-norm statistics (`neuron`:
    build_model's neuron arguments)."""
    keras.utils.set_random_seed(seed)
    model = build_model(arch, 5, STEPS, shape, width=1 / 16, batch_norm=batch_norm, **neuron)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if isinstance(inner, (tf.keras.layers.BatchNormalization, TemporalBatchNorm)):
            size, stats = inner.gamma.shape, inner.moving_mean.shape
            inner.gamma.assign(rng.uniform(0.5, 1.5, size).astype("float32"))
            inner.beta.assign(rng.uniform(0.2, 0.8, size).astype("float32"))
            inner.moving_mean.assign(rng.normal(0, 0.1, stats).astype("float32"))
            inner.moving_variance.assign(rng.uniform(0.5, 2, stats).astype("float32"))
        if inner.name == "classifier":
            inner.bias.assign(rng.normal(0, 0.1, inner.bias.shape).astype("float32"))
    return model


def brute_force(model, images, labels, blocks=None):
    """One GradientTape per sample and per t, over all (or one block's) parameters."""
    steps = model.output.shape[1]
    variables = [(v, block_of(v.path.split("/")[-2])) for v in model.trainable_variables]
    labels = labels if labels.ndim == 2 else np.repeat(labels[:, None], steps, axis=1)

    @tf.function  # eager Conv2DBackpropFilter on a batch of one crashes oneDNN in TF 2.21
    def sample_gradient(image, label, t):
        with tf.GradientTape() as tape:
            loss = per_timestep_losses(model(image, training=False), label)[0, t]
        return tape.gradient(loss, [v for v, _ in variables])

    values = np.zeros(steps)
    per_block = {}
    for n in range(len(images)):
        for t in range(steps):
            grads = sample_gradient(images[n:n + 1], labels[n:n + 1], tf.constant(t))
            for (v, block), g in zip(variables, grads):
                sq = float(tf.reduce_sum(tf.square(g))) if g is not None else 0.0
                values[t] += sq
                per_block.setdefault(block, np.zeros(steps))[t] += sq
    return values / len(images), {k: v / len(images) for k, v in per_block.items()}


def assert_matches_brute_force(model, images, labels, batch_size):
    """temporal_fisher's I_t and I_t per block against `brute_force`; returns its result and
    the brute-force I_t."""
    result = temporal_fisher(model, (images, labels), len(images), per_layer=True,
                             batch_size=batch_size)
    expected, expected_blocks = brute_force(model, images, labels)
    np.testing.assert_allclose(result.values, expected, rtol=1e-4)
    assert set(result.per_layer) == set(expected_blocks)
    for block, values in expected_blocks.items():
        np.testing.assert_allclose(result.per_layer[block], values, rtol=1e-4, atol=1e-9)
    return result, expected


def active_setup():
    """`active_model()` and 8 images with labels."""
    model = active_model()
    rng = np.random.default_rng(1)
    images = rng.random((8, 28, 28, 1), dtype=np.float32)
    labels = rng.integers(0, 5, 8).astype(np.int32)
    return model, images, labels


def reference_batch_mean(model, images, labels, batch_size, training):
    """The reference code's formula: per batch and t, the squared norm of the gradient of the
    batch-mean L_t, with batch-norm in inference or training mode, summed over batches."""
    expected = np.zeros(STEPS)
    for start in range(0, len(images), batch_size):
        for t in range(STEPS):
            with tf.GradientTape() as tape:
                losses = per_timestep_losses(
                    model(images[start:start + batch_size], training=training),
                    labels[start:start + batch_size])
                loss = tf.reduce_mean(losses[:, t])
            expected[t] += sum(float(tf.reduce_sum(g ** 2))
                               for g in tape.gradient(loss, model.trainable_variables))
    return expected


def batch_statistics_twin(model, images):
    """`model` with every batch-norm's moving statistics set to the batch moments of `images`
    (per timestep where `model` normalises per timestep in training), by Keras' own
    training-mode layers at momentum 0: in inference mode it normalises every sample exactly
    as `model` does with batch statistics held constant."""
    config = copy.deepcopy(model.get_config())

    def calibrating(node):  # every layer config, TimeFolded's inner one included
        if isinstance(node, dict):
            if node.get("class_name") == "BatchNormalization":
                node["config"]["momentum"] = 0.0
            if node.get("class_name") == "TemporalBatchNorm":
                if node["config"]["mode"] == "per_timestep":
                    node["config"].update(mode="time_specific", timesteps=STEPS)
                node["config"]["momentum"] = 0.0
            for value in node.values():
                calibrating(value)
        elif isinstance(node, list):
            for value in node:
                calibrating(value)
    calibrating(config)
    twin = keras.Model.from_config(config)
    for ours, theirs in zip(twin.layers, model.layers):
        if isinstance(ours, TemporalBatchNorm):  # statistics maybe of another shape: set next
            ours.gamma.assign(theirs.gamma)
            ours.beta.assign(theirs.beta)
        else:
            ours.set_weights(theirs.get_weights())
    twin(images, training=True)
    return twin
