"""Spiking architectures and `build_model`, which maps images to per-timestep logits."""
import copy

import keras
import tensorflow as tf

from tic_tf.models.batch_norm import (BATCH_NORM_MODES, BN_STATISTICS, TemporalBatchNorm,
                                     check_batch_norm_mode)
from tic_tf.models.blocks import synchronized_batch_norm
from tic_tf.models.graph import run_layers
from tic_tf.models.layers import RepeatOverTime, TimeFolded
from tic_tf.models.plain import alexnet, vgg16
from tic_tf.models.resnet import resnet19, resnet34
from tic_tf.neurons import LIF, _check_neuron_args

PRECISIONS = {"none": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def set_precision(name):
    """Build later models with mixed precision: "none", "bfloat16" or "float16".

    Convolutions and batch-norm then compute in 16 bits with float32 weights; the LIF membrane,
    its surrogate gradient and the logits stay float32. Keras wraps the optimizer of a float16
    model in a LossScaleOptimizer at compile time.
    """
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {name!r}.")
    keras.mixed_precision.set_global_policy(PRECISIONS[name])


ARCHITECTURES = {"resnet19": resnet19, "resnet34": resnet34, "vgg16": vgg16, "alexnet": alexnet}
SUPPORTED_INPUT_SHAPES = ((32, 32, 3), (28, 28, 1), (8, 8, 1))


def build_model(arch, num_classes, timesteps, input_shape, width=1.0, tau=2.0, threshold=1.0,
                detach_reset=True, mean=None, std=None, batch_norm="per_timestep"):
    """A `keras.Model` from images `[batch, H, W, C]` in [0, 1] to logits `[batch, T, classes]`.

    `mean`/`std` (one value per channel) normalise inside the model, so callers (training,
    attacks, serving) all work in pixel space; left out, the images pass through unchanged.
    batch_norm: how batch-norm after the stem treats time, "per_timestep" (the reference
    code), "shared", "time_specific" or "bntt"; see `tic_tf.models.batch_norm`.
    The weights do not depend on `timesteps` (but for the per-timestep statistics, scale and
    offset of "time_specific" and "bntt", which `with_timesteps` keeps): see `with_timesteps`.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}.")
    input_shape = tuple(int(d) for d in input_shape)
    if input_shape not in SUPPORTED_INPUT_SHAPES:
        raise ValueError(f"Unsupported input shape {input_shape}; the models take "
                         f"{', '.join(map(str, SUPPORTED_INPUT_SHAPES))} images.")
    if int(timesteps) < 1:
        raise ValueError(f"timesteps must be a positive integer, got {timesteps}.")
    if not width > 0:
        raise ValueError(f"width must be positive, got {width}.")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
    _check_neuron_args(tau, threshold)
    check_batch_norm_mode(batch_norm)
    channels = input_shape[-1]
    mean = [0.0] * channels if mean is None else [float(m) for m in mean]
    std = [1.0] * channels if std is None else [float(s) for s in std]
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ValueError(f"mean and std need {channels} values each, std positive.")

    images = keras.Input(input_shape, name="images")
    normalised = keras.layers.Normalization(
        mean=mean, variance=[s * s for s in std], name="normalize")(images)
    neuron = dict(tau=tau, threshold=threshold, detach_reset=detach_reset)
    logits = ARCHITECTURES[arch](normalised, int(num_classes), int(timesteps), width, neuron,
                                 batch_norm)
    return keras.Model(images, logits, name=arch)


def with_timesteps(model, timesteps):
    """The same network and weights, run over a different number of timesteps.

    Built in a strategy's scope, the clone's batch-norm follows that strategy (see
    `blocks.synchronized_batch_norm`)."""
    if int(timesteps) < 1:
        raise ValueError(f"timesteps must be a positive integer, got {timesteps}.")
    config = model.get_config()
    repeats = [layer for layer in config["layers"] if layer["class_name"] == "RepeatOverTime"]
    if len(repeats) != 1:
        raise ValueError("with_timesteps needs a model made by tic_tf.models.build_model.")
    repeats[0]["config"]["timesteps"] = int(timesteps)
    for layer in config["layers"]:  # a clone built in a strategy's scope works under it
        if layer["class_name"] in ("BatchNormalization", "TemporalBatchNorm"):
            layer["config"]["synchronized"] = synchronized_batch_norm()
    clone = keras.Model.from_config(config)
    clone.set_weights(model.get_weights())
    return clone


def time_specific_twin(model, images):
    """A per-timestep batch-norm `model` turned time-specific (BNTT statistics), same weights.

    The two modes train identically (each timestep normalised by its own batch statistics);
    they differ only in what inference uses. The twin's statistics of timestep t are those
    of `images` (one batch, in [0, 1]) at timestep t, computed as training computes them.
    """
    config = model.get_config()
    norms = [layer for layer in config["layers"] if layer["class_name"] == "TemporalBatchNorm"]
    if not norms or any(layer["config"]["mode"] != "per_timestep" for layer in norms):
        raise ValueError("time_specific_twin needs a model built with batch_norm='per_timestep'.")
    steps = timesteps_of(model)
    for layer in norms:
        layer["config"].update(mode="time_specific", timesteps=steps, momentum=0.0)
    twin = keras.Model.from_config(copy.deepcopy(config))  # from_config consumes its input
    for ours, theirs in zip(twin.layers, model.layers):
        if isinstance(ours, TemporalBatchNorm):  # gamma, beta; statistics come next
            ours.gamma.assign(theirs.gamma)
            ours.beta.assign(theirs.beta)
        else:
            ours.set_weights(theirs.get_weights())
    twin(images, training=True)  # momentum 0: the moving statistics become these batch's
    for layer in norms:
        layer["config"]["momentum"] = next(
            theirs.momentum for theirs in model.layers if theirs.name == layer["config"]["name"])
    calibrated = keras.Model.from_config(config)
    calibrated.set_weights(twin.get_weights())
    return calibrated


def relu_twin(model):
    """`model` at one timestep with every LIF layer replaced by ReLU, same weights: the dense
    network a spiking one is measured against (the benchmark's speed ceiling)."""
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "RepeatOverTime":
            layer["config"]["timesteps"] = 1
        elif layer["class_name"] == "LIF":
            layer.update(module="keras.layers", class_name="Activation", registered_name=None,
                         config={"name": layer["config"]["name"], "activation": "relu"})
    twin = keras.Model.from_config(config)
    twin.set_weights(model.get_weights())  # LIF layers have none, so the lists align
    return twin


def run_on_frames(model, frames):
    """Logits of a `build_model` network fed a different image at each timestep.

    frames: `[batch, T, H, W, C]` in [0, 1]. The stem (normalisation, first conv + BN) runs on
    every frame instead of once; with identical frames this equals `model(images)` in
    inference mode. Used for inputs perturbed only during some timesteps.
    """
    steps = frames.shape[1]
    repeat = next(layer for layer in model.layers if isinstance(layer, RepeatOverTime))
    folded = tf.reshape(frames, [-1, *frames.shape[2:]])
    unfold = lambda stem: tf.reshape(stem, [-1, steps, *stem.shape[1:]])  # noqa: E731
    logits, _ = run_layers(model, folded, substitute={repeat: unfold})
    return logits


def timesteps_of(model):
    """The number of timesteps a `build_model` network runs for."""
    return int(model.output.shape[1])


def lif_layers(model):
    """The model's LIF layers, in order."""
    return [layer for layer in model.layers if isinstance(layer, LIF)]


__all__ = ["ARCHITECTURES", "BATCH_NORM_MODES", "BN_STATISTICS", "TemporalBatchNorm",
           "build_model", "with_timesteps", "timesteps_of", "lif_layers", "run_on_frames",
           "time_specific_twin", "RepeatOverTime", "TimeFolded"]
