"""Losses and metrics on per-timestep logits `[batch, T, classes]`."""
import keras
import tensorflow as tf


def accumulated_logits(logits_per_timestep):
    """Mean of the logits over timesteps 1..t, for every t: `[batch, T, classes]`."""
    counts = tf.cast(tf.range(1, tf.shape(logits_per_timestep)[1] + 1),
                     logits_per_timestep.dtype)
    return tf.cumsum(logits_per_timestep, axis=1) / counts[None, :, None]


def per_timestep_losses(logits_per_timestep, labels):
    """L_t for every sample and t: cross-entropy of the accumulated logits, `[batch, T]`.

    `labels` is `[batch]` (the same label at every t) or `[batch, T]`.
    """
    logits = accumulated_logits(logits_per_timestep)
    labels = tf.cast(labels, tf.int32)
    if labels.shape.rank == 1:
        labels = tf.repeat(labels[:, None], tf.shape(logits)[1], axis=1)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


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


@keras.saving.register_keras_serializable(package="tic_tf")
def mean_logit_accuracy(y_true, y_pred):
    """Top-1 accuracy of the mean logits, per example."""
    return keras.metrics.sparse_categorical_accuracy(y_true, mean_logits(y_pred))


def accuracy_metric():
    return keras.metrics.MeanMetricWrapper(mean_logit_accuracy, name="accuracy")


def alpha_loss(logits_per_timestep, labels, alpha):
    """Eq. 9-10: (1/T) sum_t |L_t - alpha|, L_t the batch-mean cross-entropy of the logits
    accumulated over timesteps 1..t. Below alpha the gradient of a term flips sign (ascent),
    which keeps the Fisher information of every timestep small when alpha is small.
    Under a multi-replica strategy L_t is the mean over the global batch, as on one device.
    """
    per_t = _global_batch_mean(per_timestep_losses(logits_per_timestep, labels))
    return tf.reduce_mean(tf.abs(per_t - alpha))


def _global_batch_mean(values):
    """The mean of `values` `[batch, ...]` over the global batch of a multi-replica step.

    Its value is the global mean; its gradient is that of this replica's share of it (its own
    samples' sum over the global count), so that the replicas' gradients, which Keras sums,
    make the gradient of the global mean. (With |L_t - alpha| of each replica's shard instead,
    replicas on either side of alpha would pull against each other.)
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tf.reduce_mean(values, axis=0)
    local_sum = tf.reduce_sum(values, axis=0)
    count = context.all_reduce("sum", tf.cast(tf.shape(values)[0], values.dtype))
    share = local_sum / count
    return share + tf.stop_gradient(context.all_reduce("sum", local_sum) / count - share)


@keras.saving.register_keras_serializable(package="tic_tf")
class AlphaLoss(keras.losses.Loss):
    """`alpha_loss` as a Keras loss (a scalar per batch)."""

    def __init__(self, alpha, name="alpha_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.alpha = float(alpha)

    def call(self, y_true, y_pred):
        return alpha_loss(y_pred, y_true, self.alpha)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


def tet_loss(logits_per_timestep, labels, lamb=1e-3, target=1.0):
    """TET (Deng et al. 2022), per example: (1 - lamb) (1/T) sum_t CE(O_t, y) + lamb
    mean((O - target)^2), O_t the logits of timestep t alone (not accumulated): every
    timestep is trained to predict on its own; the MSE term keeps the logits near `target`.
    Its batch mean is the paper's loss (their code's defaults: lamb 1e-3, target 1)."""
    logits = tf.cast(logits_per_timestep, tf.float32)
    labels = tf.repeat(tf.cast(labels, tf.int32)[:, None], tf.shape(logits)[1], axis=1)
    cross_entropy = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=logits), axis=1)
    return ((1.0 - lamb) * cross_entropy
            + lamb * tf.reduce_mean(tf.square(logits - target), axis=[1, 2]))


@keras.saving.register_keras_serializable(package="tic_tf")
class TETLoss(keras.losses.Loss):
    """`tet_loss` as a Keras loss."""

    def __init__(self, lamb=1e-3, target=1.0, name="tet_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.lamb, self.target = float(lamb), float(target)

    def call(self, y_true, y_pred):
        return tet_loss(y_pred, y_true, self.lamb, self.target)

    def get_config(self):
        return {**super().get_config(), "lamb": self.lamb, "target": self.target}


class SwitchedLoss(keras.losses.Loss):
    """`first` until `LossSwitch` turns it over, then `second`: FTET's cross-entropy to TET
    (Han et al. 2025). A variable chooses, so the compiled training step is not retraced."""

    def __init__(self, first, second, name="switched_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.first, self.second = first, second
        self.switched = tf.Variable(0.0, trainable=False, name="loss_switched")

    def call(self, y_true, y_pred):
        return ((1.0 - self.switched) * self.first.call(y_true, y_pred)
                + self.switched * self.second.call(y_true, y_pred))


class LossSwitch(keras.callbacks.Callback):
    """Turns the model's SwitchedLoss to its second loss from epoch `epoch` (1-based) on, or,
    with `stable_within`, from the epoch after the first Fisher measurement whose information
    centroid (`fisher/centroid` in the logs) moved less than that from the one before (FTET's
    criterion). Set at every epoch's start and logged as `loss/second` (1 for an epoch trained
    with the second loss). `history`: the (epoch, centroid) measurements of a resumed run's
    finished epochs, replayed so that it switches where the uninterrupted run did. Put it
    after the Fisher monitor."""

    def __init__(self, epoch=None, stable_within=None, history=()):
        super().__init__()
        self.epoch, self.stable_within, self.last_centroid = epoch, stable_within, None
        for finished, centroid in history:
            self._measured(finished, centroid)

    def _measured(self, epoch, centroid):
        """The centroid measured after `epoch` (1-based): switch from the next epoch on if it
        moved less than `stable_within` from the previous measurement."""
        if (self.epoch is None and self.last_centroid is not None
                and abs(centroid - self.last_centroid) < self.stable_within):
            self.epoch = epoch + 1
        self.last_centroid = centroid

    def on_epoch_begin(self, epoch, logs=None):
        second = self.epoch is not None and epoch + 1 >= self.epoch
        self.model.loss.switched.assign(1.0 if second else 0.0)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["loss/second"] = float(self.model.loss.switched.numpy())
        if self.stable_within is not None and "fisher/centroid" in logs:
            self._measured(epoch + 1, float(logs["fisher/centroid"]))


@keras.saving.register_keras_serializable(package="tic_tf")
def timestep_loss(y_true, y_pred, timestep):
    """L_t per example for one timestep (0-based) of the accumulated logits."""
    return per_timestep_losses(y_pred, y_true)[:, timestep]


@keras.saving.register_keras_serializable(package="tic_tf")
class TimestepLoss(keras.metrics.MeanMetricWrapper):
    """The mean L_t of timestep `timestep` (0-based) over an epoch, named loss_t<t+1>."""

    def __init__(self, timestep, name=None, dtype=None):
        super().__init__(timestep_loss, name=name or f"loss_t{timestep + 1}", dtype=dtype,
                         timestep=timestep)
        self.timestep = timestep

    def get_config(self):
        return {"timestep": self.timestep, "name": self.name, "dtype": self.dtype}


def per_timestep_loss_metrics(timesteps):
    """Metrics `loss_t1..loss_tT`: the mean L_t over an epoch, for TensorBoard."""
    return [TimestepLoss(t) for t in range(timesteps)]
