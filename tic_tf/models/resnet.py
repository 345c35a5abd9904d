"""Spiking ResNets with basic blocks (conv-BN-LIF-conv-BN, + shortcut, add, LIF)."""
import keras

from tic_tf.models.blocks import channels, classifier_head, conv_bn, direct_coding_stem, folded
from tic_tf.neurons import LIF

# (channels, blocks, stride) per stage, at full width.
RESNET19_STAGES = ((256, 3, 2), (512, 3, 2), (512, 2, 2))
RESNET34_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))


def _basic_block(x, filters, stride, neuron, bn_mode, name):
    out = conv_bn(x, filters, 3, stride, bn_mode, f"{name}_1")
    out = LIF(**neuron, name=f"{name}_lif1")(out)
    out = conv_bn(out, filters, 3, 1, bn_mode, f"{name}_2")
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = conv_bn(x, filters, 1, stride, bn_mode, f"{name}_shortcut")
    out = keras.layers.Add(name=f"{name}_add")([out, shortcut])
    return LIF(**neuron, name=f"{name}_lif2")(out)


def _resnet(images, num_classes, timesteps, width, neuron, bn_mode, stem_channels, stages):
    x = direct_coding_stem(images, channels(stem_channels, width), timesteps, neuron)
    for stage, (base, blocks, stride) in enumerate(stages, start=1):
        for block in range(1, blocks + 1):
            x = _basic_block(x, channels(base, width), stride if block == 1 else 1, neuron, bn_mode,
                             name=f"stage{stage}_block{block}")
    x = folded(keras.layers.GlobalAveragePooling2D(name="pool"))(x)
    return classifier_head(x, num_classes)


def resnet19(images, num_classes, timesteps, width, neuron, bn_mode):
    """The reference ResNet19: 128-channel stem, stages of 3/3/2 blocks at 256/512/512."""
    return _resnet(images, num_classes, timesteps, width, neuron, bn_mode, 128, RESNET19_STAGES)


def resnet34(images, num_classes, timesteps, width, neuron, bn_mode):
    """ResNet34 with a CIFAR stem (3x3 conv, no max-pool): 3/4/6/3 blocks at 64..512."""
    return _resnet(images, num_classes, timesteps, width, neuron, bn_mode, 64, RESNET34_STAGES)
