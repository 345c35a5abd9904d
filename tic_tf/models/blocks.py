"""Building blocks shared by the spiking architectures; all act on `[batch, time, ...]`."""
import keras
import tensorflow as tf

from tic_tf.models.batch_norm import TemporalBatchNorm
from tic_tf.models.layers import (FlippedKernelConv2D, PointwiseConv2D, RepeatOverTime,
                                  TimeFolded)
from tic_tf.neurons import LIF

# PyTorch's batch-norm defaults (momentum 0.1, eps 1e-5), as in the reference implementation.
_BN = dict(momentum=0.9, epsilon=1e-5)


def channels(base, width):
    """Channel count of a layer whose full-width size is `base`."""
    return max(1, int(round(base * width)))


def conv(filters, kernel, stride, name):
    layer = PointwiseConv2D if kernel == 1 else FlippedKernelConv2D
    return layer(filters, kernel, strides=stride, padding="same", use_bias=False, name=name)


def synchronized_batch_norm():
    """Whether batch-norm layers built now all-reduce their batch statistics: so under a
    strategy with several replicas (in its scope), where they are then those of the global
    batch, as on one device."""
    return tf.distribute.get_strategy().num_replicas_in_sync > 1


def batch_norm(name):
    """Batch-norm of images `[batch, H, W, C]` (the stem runs once, before time exists)."""
    return keras.layers.BatchNormalization(name=name, synchronized=synchronized_batch_norm(),
                                           **_BN)


def temporal_batch_norm(x, mode, name):
    """Batch-norm of spike-train features `[batch, time, ..., C]` in mode `mode` (see
    `tic_tf.models.batch_norm`)."""
    if mode == "shared":
        return TimeFolded(batch_norm(name), name=f"{name}_t")(x)
    return TemporalBatchNorm(mode, timesteps=x.shape[1], synchronized=synchronized_batch_norm(),
                             name=name, **_BN)(x)


def direct_coding_stem(images, filters, timesteps, neuron, name="stem"):
    """First conv + BN computed once on the image, then fed to a LIF layer at every timestep."""
    x = conv(filters, 3, 1, f"{name}_conv")(images)
    x = batch_norm(f"{name}_bn")(x)
    x = RepeatOverTime(timesteps, name="repeat_over_time")(x)
    return LIF(**neuron, name=f"{name}_lif")(x)


def conv_bn(x, filters, kernel, stride, bn_mode, name):
    """Convolution over all timesteps at once (time folded into the batch) + batch-norm."""
    x = TimeFolded(conv(filters, kernel, stride, f"{name}_conv"), name=f"{name}_conv_t")(x)
    return temporal_batch_norm(x, bn_mode, f"{name}_bn")


def folded(layer):
    """Wrap a stateless layer so it runs on every timestep."""
    return TimeFolded(layer, name=f"{layer.name}_t")


def classifier_head(x, num_classes, name="classifier"):
    """Per-timestep logits `[batch, time, classes]` from a per-timestep feature vector.

    The logits stay float32 under mixed precision: losses, Fisher and attacks read them.
    """
    return TimeFolded(keras.layers.Dense(num_classes, name=name, dtype="float32"),
                      name=f"{name}_t", dtype="float32")(x)
