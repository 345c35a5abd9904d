"""Spiking architectures and `build_model`, which maps images to per-timestep logits."""
import warnings

import keras
import tensorflow as tf

from tic_tf import surrogates
from tic_tf.kernels import native_bfloat16
from tic_tf.models.batch_norm import (BATCH_NORM_MODES, BN_STATISTICS, TemporalBatchNorm,
                                     check_batch_norm_mode)
from tic_tf.models.cloning import rebuilt
from tic_tf.models.folding import FoldedBatchNorm, fold_batch_norm
from tic_tf.models.graph import run_layers
from tic_tf.models.layers import RepeatOverTime, TimeFolded
from tic_tf.models.plain import alexnet, vgg16
from tic_tf.models.resnet import resnet19, resnet34
from tic_tf.neurons import LIF, check_neuron_args

PRECISIONS = {"none": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def set_precision(name):
    """Build later models with mixed precision: "none", "bfloat16" or "float16".

    Convolutions and batch-norm then compute in 16 bits with float32 weights; the LIF membrane,
    its surrogate gradient and the logits stay float32. Keras wraps the optimizer of a float16
    model in a LossScaleOptimizer at compile time. Warns when bfloat16 is asked for on a CPU
    that only emulates it (no AVX512-BF16, no AMX), where it is slower than float32.
    """
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {name!r}.")
    if name == "bfloat16" and native_bfloat16() is False:
        warnings.warn("bfloat16 on this CPU (no AVX512-BF16, no AMX) is emulated by "
                      "TensorFlow and slower than float32; use float32 here (precision "
                      "'none', --mixed_precision=none).", stacklevel=2)
    keras.mixed_precision.set_global_policy(PRECISIONS[name])


ARCHITECTURES = {"resnet19": resnet19, "resnet34": resnet34, "vgg16": vgg16, "alexnet": alexnet}


def build_model(arch, num_classes, timesteps, input_shape, width=1.0, tau=2.0, threshold=1.0,
                detach_reset=True, mean=None, std=None, batch_norm="per_timestep",
                surrogate_sharpness=None, recompute=False, neuron="lif", reset="hard",
                surrogate="arctan"):
    """A `keras.Model` from images `[batch, H, W, C]` (any size and channel count) in [0, 1]
    to logits `[batch, T, classes]`.

    `mean`/`std` (one value per channel) normalise inside the model, so callers (training,
    attacks, serving) all work in pixel space; left out, the images pass through unchanged.
    batch_norm: how batch-norm after the stem treats time, "per_timestep" (the reference
    code), "shared", "time_specific" or "bntt"; see `tic_tf.models.batch_norm`.
    neuron ("lif" or "if"), reset ("hard" or "soft"), surrogate (`tic_tf.surrogates`),
    surrogate_sharpness (None: the surrogate's default) and recompute go to every spiking
    layer (see `tic_tf.neurons.LIF`).
    The weights do not depend on `timesteps` (but for the per-timestep statistics, scale and
    offset of "time_specific" and "bntt", which `with_timesteps` keeps): see `with_timesteps`.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}.")
    input_shape = tuple(int(d) for d in input_shape)
    # "same" padding halves a side rounding up: any image survives every downsampling.
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ValueError(f"input_shape must be (height, width, channels), each at least 1, got "
                         f"{input_shape}.")
    if int(timesteps) < 1:
        raise ValueError(f"timesteps must be a positive integer, got {timesteps}.")
    if not width > 0:
        raise ValueError(f"width must be positive, got {width}.")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
    if surrogate_sharpness is None:
        surrogate_sharpness = surrogates.DEFAULTS.get(surrogate, 1.0)
    check_neuron_args(tau, threshold, surrogate_sharpness, neuron, reset, surrogate)
    check_batch_norm_mode(batch_norm)
    channels = input_shape[-1]
    mean = [0.0] * channels if mean is None else [float(m) for m in mean]
    std = [1.0] * channels if std is None else [float(s) for s in std]
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ValueError(f"mean and std need {channels} values each, std positive.")

    images = keras.Input(input_shape, name="images")
    normalised = keras.layers.Normalization(
        mean=mean, variance=[s * s for s in std], name="normalize")(images)
    neuron = dict(tau=tau, threshold=threshold, detach_reset=detach_reset,
                  surrogate_sharpness=surrogate_sharpness, recompute=recompute, neuron=neuron,
                  reset=reset, surrogate=surrogate)
    logits = ARCHITECTURES[arch](normalised, int(num_classes), int(timesteps), width, neuron,
                                 batch_norm)
    return keras.Model(images, logits, name=arch)


def _check_built_here(model):
    if sum(isinstance(layer, RepeatOverTime) for layer in model.layers) != 1:
        raise ValueError("This needs a model made by tic_tf.models.build_model.")


def _with_layer_settings(model, layer_class, **settings):
    """A copy of `model`, same weights, whose `layer_class` layers take `settings`."""
    def change(layer, config):
        if isinstance(layer, layer_class):
            config.update(settings)

    clone = rebuilt(model, change)
    clone.set_weights(model.get_weights())
    return clone


def with_timesteps(model, timesteps):
    """The same network and weights, run over a different number of timesteps."""
    if int(timesteps) < 1:
        raise ValueError(f"timesteps must be a positive integer, got {timesteps}.")
    _check_built_here(model)
    return _with_layer_settings(model, RepeatOverTime, timesteps=int(timesteps))


def with_surrogate(model, sharpness, surrogate=None):
    """The same network and weights whose spikes back-propagate through `surrogate` (default:
    the model's own) of `sharpness`: an attack through another surrogate than the model
    trained with."""
    surrogate = surrogate or surrogate_of(model)[0]
    surrogates.check_surrogate(surrogate, sharpness)
    return _with_layer_settings(model, LIF, surrogate=surrogate,
                                surrogate_sharpness=float(sharpness))


def surrogate_of(model):
    """(surrogate, sharpness) of the model's spiking layers."""
    cell = lif_layers(model)[0].cell
    return cell.surrogate, cell.surrogate_sharpness


def time_specific_twin(model, images):
    """A per-timestep batch-norm `model` turned time-specific (BNTT statistics), same weights.

    The two modes train identically (each timestep normalised by its own batch statistics);
    they differ only in what inference uses. The twin's statistics of timestep t are those
    of `images` (one batch, in [0, 1]) at timestep t, computed as training computes them.
    """
    norms = [layer for layer in model.layers if isinstance(layer, TemporalBatchNorm)]
    if not norms or any(layer.mode != "per_timestep" for layer in norms):
        raise ValueError("time_specific_twin needs a model built with batch_norm='per_timestep'.")
    timesteps = timesteps_of(model)

    def time_specific(calibrating):
        def change(layer, config):
            if isinstance(layer, TemporalBatchNorm):  # momentum 0: statistics := the batch's
                config.update(mode="time_specific", timesteps=timesteps,
                              momentum=0.0 if calibrating else layer.momentum)
        return rebuilt(model, change)

    twin = time_specific(calibrating=True)
    for ours, theirs in zip(twin.layers, model.layers):
        if isinstance(ours, TemporalBatchNorm):  # gamma, beta; statistics come next
            ours.gamma.assign(theirs.gamma)
            ours.beta.assign(theirs.beta)
        else:
            ours.set_weights(theirs.get_weights())
    twin(images, training=True)
    calibrated = time_specific(calibrating=False)
    calibrated.set_weights(twin.get_weights())
    return calibrated


def relu_twin(model):
    """`model` at one timestep with every LIF layer replaced by ReLU, same weights: the dense
    network a spiking one is measured against (the benchmark's speed ceiling)."""
    _check_built_here(model)

    def change(layer, config):
        if isinstance(layer, RepeatOverTime):
            config["timesteps"] = 1
        elif isinstance(layer, LIF):
            return keras.layers.Activation("relu", name=layer.name)

    twin = rebuilt(model, change)
    twin.set_weights(model.get_weights())  # LIF layers have none, so the lists align
    return twin


def run_on_frames(model, frames):
    """Logits of a `build_model` network fed a different image at each timestep.

    frames: `[batch, T, H, W, C]` in [0, 1]. The stem (normalisation, first conv + BN) runs on
    every frame instead of once; with identical frames this equals `model(images)` in
    inference mode. Used for inputs perturbed only during some timesteps.
    """
    timesteps = frames.shape[1]
    repeat = next(layer for layer in model.layers if isinstance(layer, RepeatOverTime))
    folded = tf.reshape(frames, [-1, *frames.shape[2:]])
    unfold = lambda stem: tf.reshape(stem, [-1, timesteps, *stem.shape[1:]])  # noqa: E731
    logits, _ = run_layers(model, folded, substitute={repeat: unfold})
    return logits


def timesteps_of(model):
    """The number of timesteps a `build_model` network runs for."""
    return int(model.output.shape[1])


def lif_layers(model):
    """The model's LIF layers, in order."""
    return [layer for layer in model.layers if isinstance(layer, LIF)]


__all__ = ["ARCHITECTURES", "BATCH_NORM_MODES", "BN_STATISTICS", "TemporalBatchNorm",
           "build_model", "with_timesteps", "with_surrogate", "surrogate_of", "timesteps_of",
           "lif_layers", "run_on_frames", "time_specific_twin", "relu_twin", "rebuilt",
           "fold_batch_norm", "FoldedBatchNorm",
           "RepeatOverTime", "TimeFolded"]
