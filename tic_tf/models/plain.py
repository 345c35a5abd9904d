"""Spiking networks without skip connections: VGG16 and AlexNet (CIFAR-sized variants)."""
import keras

from tic_tf.models.blocks import (channels, classifier_head, conv_bn, direct_coding_stem,
                                  folded, temporal_batch_norm)
from tic_tf.neurons import LIF

POOL = "pool"
# Convolution widths (full width) with average-pooling points, then hidden FC widths.
VGG16_FEATURES = (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL,
                  512, 512, 512, POOL, 512, 512, 512, POOL)
VGG16_HIDDEN = (4096, 4096)
ALEXNET_FEATURES = (64, POOL, 192, POOL, 384, 256, 256, POOL)
ALEXNET_HIDDEN = (1024, 1024)


def _plain(images, num_classes, timesteps, width, neuron, bn_mode, features, hidden):
    first, *rest = features
    x = direct_coding_stem(images, channels(first, width), timesteps, neuron)
    pools = convs = 0
    for item in rest:
        if item == POOL:
            pools += 1
            x = folded(keras.layers.AveragePooling2D(2, padding="same", name=f"pool{pools}"))(x)
        else:
            convs += 1
            x = conv_bn(x, channels(item, width), 3, 1, bn_mode, f"features{convs}")
            x = LIF(**neuron, name=f"features{convs}_lif")(x)
    x = folded(keras.layers.Flatten(name="flatten"))(x)
    for index, units in enumerate(hidden, start=1):
        # Hidden FC layers are batch-normalised like the convolutions (no bias, BN, LIF).
        x = folded(keras.layers.Dense(channels(units, width), use_bias=False, name=f"fc{index}"))(x)
        x = temporal_batch_norm(x, bn_mode, f"fc{index}_bn")
        x = LIF(**neuron, name=f"fc{index}_lif")(x)
    return classifier_head(x, num_classes)


def vgg16(images, num_classes, timesteps, width, neuron, bn_mode):
    """VGG16: 13 3x3 conv-BN-LIF layers in five pooled groups, two hidden FC layers."""
    return _plain(images, num_classes, timesteps, width, neuron, bn_mode, VGG16_FEATURES,
                  VGG16_HIDDEN)


def alexnet(images, num_classes, timesteps, width, neuron, bn_mode):
    """AlexNet for small images: five 3x3 conv-BN-LIF layers, three pools, two hidden FC."""
    return _plain(images, num_classes, timesteps, width, neuron, bn_mode, ALEXNET_FEATURES,
                  ALEXNET_HIDDEN)
