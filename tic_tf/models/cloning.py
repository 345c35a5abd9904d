"""Copies of a functional model with some of its layers rebuilt differently."""
import keras

from tic_tf.models.batch_norm import TemporalBatchNorm
from tic_tf.models.blocks import synchronized_batch_norm


def rebuilt(model, change):
    """A copy of `model` (`keras.models.clone_model`) whose layers are rebuilt from their
    configs, each first passed to `change(layer, config)`, which edits the config in place or
    returns a layer to use instead. The copy has fresh weights: set them from `model`.

    Its batch-norm layers follow the strategy whose scope the copy is built in (see
    `blocks.synchronized_batch_norm`), so a copy made under a strategy works under it."""
    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, (keras.layers.BatchNormalization, TemporalBatchNorm)):
            config["synchronized"] = synchronized_batch_norm()
        replacement = change(layer, config)
        return replacement if replacement is not None else layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=clone)
