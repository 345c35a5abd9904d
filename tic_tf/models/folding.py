"""Batch-norm folded into the layer before it, for inference: one pass over the features
fewer per batch-norm (the standard deployment rewrite; the exported SavedModel uses it)."""
import keras
import numpy as np

from tic_tf.models.batch_norm import TemporalBatchNorm
from tic_tf.models.cloning import rebuilt
from tic_tf.models.graph import input_layers
from tic_tf.models.layers import TimeFolded


@keras.saving.register_keras_serializable(package="tic_tf")
class FoldedBatchNorm(keras.layers.Layer):
    """Stands where a batch-norm was before `fold_batch_norm` moved it into the layer that
    feeds it: passes its input on."""

    def call(self, inputs, training=None, mask=None):
        return inputs


def fold_batch_norm(model):
    """The same network for inference, each batch-norm whose inference affine is the same at
    every timestep (the stem's, "per_timestep" and "shared") folded into the convolution or
    dense layer that feeds it alone: its kernel scaled by gamma / sqrt(variance + eps) per
    output channel, plus a bias. "time_specific" and "bntt" batch-norms, whose affine differs
    per timestep, stay. Only for inference: it has no batch statistics to train with, and
    its weights are not the model's (the Fisher estimator needs those).

    The logits equal the model's in inference up to float rounding, which can flip a spike
    whose membrane lies within rounding of the threshold. With nothing to fold, returns
    `model` itself.
    """
    folds = _foldable(model)
    if not folds:
        return model
    norms = set(folds.values())

    def change(layer, config):
        if layer.name in norms:
            # The policy by name: a policy object would make the layer's config unserialisable.
            return FoldedBatchNorm(name=layer.name, dtype=layer.dtype_policy.name)
        if layer.name in folds:
            (config["layer"]["config"] if isinstance(layer, TimeFolded) else config)[
                "use_bias"] = True

    folded = rebuilt(model, change)
    for layer in folded.layers:
        if layer.name in folds:
            scale, shift = _affine(model.get_layer(folds[layer.name]))
            original = _inner(model.get_layer(layer.name))
            bias = original.bias.numpy() * scale if original.use_bias else 0.0
            _inner(layer).kernel.assign(original.kernel.numpy() * scale)
            _inner(layer).bias.assign(bias + shift)
        elif layer.name not in norms:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return folded


def _inner(layer):
    return layer.layer if isinstance(layer, TimeFolded) else layer


def _is_foldable_norm(layer):
    inner = _inner(layer)
    if isinstance(inner, TemporalBatchNorm):
        return inner.mode == "per_timestep"
    return (isinstance(inner, keras.layers.BatchNormalization) and inner.axis == -1
            and inner.scale and inner.center)  # channels last, with gamma and beta


def _foldable(model):
    """{name of a layer: name of the batch-norm folded into it}: convolutions and dense
    layers whose output feeds only a batch-norm with one affine for all timesteps."""
    inputs, consumers = input_layers(model), {}
    for name, sources in inputs.items():
        for source in sources:
            consumers.setdefault(source, []).append(name)
    folds = {}
    for layer in model.layers:
        sources = inputs.get(layer.name, [])
        if not _is_foldable_norm(layer) or len(sources) != 1:
            continue
        source = model.get_layer(sources[0])
        if (isinstance(_inner(source), (keras.layers.Conv2D, keras.layers.Dense))
                and isinstance(source, TimeFolded) == isinstance(layer, (TimeFolded,
                                                                         TemporalBatchNorm))
                and consumers[source.name] == [layer.name]):
            folds[source.name] = layer.name
    return folds


def _affine(norm):
    """Scale and shift `[C]` of a batch-norm's inference affine (float32 numpy)."""
    norm = _inner(norm)
    scale = norm.gamma.numpy() / np.sqrt(norm.moving_variance.numpy() + norm.epsilon)
    return scale, norm.beta.numpy() - norm.moving_mean.numpy() * scale
