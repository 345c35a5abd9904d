"""Losses and metrics on per-timestep logits `[batch, T, classes]`."""
import keras
import tensorflow as tf


def mean_logits(logits_per_timestep):
    """The prediction of a spiking network: the mean of its per-timestep logits."""
    return tf.reduce_mean(logits_per_timestep, axis=1)


@keras.saving.register_keras_serializable(package="tic_tf")
class MeanLogitCrossEntropy(keras.losses.Loss):
    """Cross-entropy of the mean of the T logits: the paper's training loss."""

    def __init__(self, name="mean_logit_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(
            y_true, mean_logits(y_pred), from_logits=True)


def mean_logit_accuracy(y_true, y_pred):
    """Top-1 accuracy of the mean logits, per example."""
    return keras.metrics.sparse_categorical_accuracy(y_true, mean_logits(y_pred))


def accuracy_metric():
    return keras.metrics.MeanMetricWrapper(mean_logit_accuracy, name="accuracy")
