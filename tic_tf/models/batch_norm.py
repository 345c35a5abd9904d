"""Batch-norm over spike trains `[batch, time, ..., channels]`, with a choice of how the
statistics treat time.

- "per_timestep" (the paper's reference code, which runs the network one timestep at a time):
  in training each timestep is normalised with its own batch moments, and the moving
  statistics are updated once per timestep, in time order, as T successive batch-norm calls
  would; in inference every timestep uses the same moving statistics.
- "shared": the moments are pooled over batch and time (SpikingJelly's multi-step mode,
  tdBN). `build_model` builds this mode as a Keras BatchNormalization over time folded into
  the batch, the layout of checkpoints written before the modes existed.
- "time_specific": as "per_timestep" in training, but each timestep keeps its own moving
  statistics and uses them in inference too (the statistics of Batch Normalization Through
  Time, Kim & Panda 2021), so inference sees every timestep as training did. A model run for
  more timesteps than it was built with uses the last timestep's statistics beyond them.
- "bntt": as "time_specific", and each timestep also has its own scale and offset (BNTT in
  full: the network may learn to weigh timesteps differently); beyond the built timesteps,
  the last one's.

Moments follow Keras' BatchNormalization: the biased variance, computed in float32 whatever
the model's precision, all-reduced over replicas when `synchronized`.
"""
import keras
import tensorflow as tf

BATCH_NORM_MODES = ("per_timestep", "shared", "time_specific", "bntt")
_PER_TIMESTEP_STATISTICS = ("time_specific", "bntt")  # moving statistics kept per timestep
# Which statistics a measurement normalises with: the moving ones (inference mode) or each
# batch's own (as in training).
BN_STATISTICS = ("moving", "batch")


def check_batch_norm_mode(mode):
    """A ValueError naming the choices unless `mode` is one of BATCH_NORM_MODES."""
    if mode not in BATCH_NORM_MODES:
        raise ValueError(f"batch_norm must be one of {', '.join(BATCH_NORM_MODES)}; "
                         f"got {mode!r}.")


@keras.saving.register_keras_serializable(package="tic_tf")
class TemporalBatchNorm(keras.layers.Layer):
    """Batch-norm of `[batch, time, ..., channels]` with per-timestep training statistics:
    modes "per_timestep", "time_specific" and "bntt" ("shared" is a Keras BatchNormalization
    over time folded into the batch).

    timesteps: how many timesteps keep their own moving statistics (and for "bntt" their own
    scale and offset); "time_specific" and "bntt" only.
    momentum, epsilon: as in Keras (the defaults are PyTorch's momentum 0.1 and eps 1e-5).
    """

    def __init__(self, mode="per_timestep", timesteps=None, momentum=0.9, epsilon=1e-5,
                 synchronized=False, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("per_timestep", *_PER_TIMESTEP_STATISTICS):
            raise ValueError(f"TemporalBatchNorm mode must be per_timestep, time_specific or "
                             f"bntt, got {mode!r}.")
        if mode in _PER_TIMESTEP_STATISTICS and not (timesteps and int(timesteps) >= 1):
            raise ValueError(f"batch_norm={mode!r} needs the number of timesteps.")
        self.mode = mode
        self.timesteps = int(timesteps) if timesteps else None
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.synchronized = bool(synchronized)

    def build(self, input_shape):
        channels = input_shape[-1]
        per_time = (self.timesteps, channels)
        stats = per_time if self.mode in _PER_TIMESTEP_STATISTICS else (channels,)
        affine = per_time if self.mode == "bntt" else (channels,)
        # Never autocast: statistics and affine parameters stay float32 under mixed precision.
        self.gamma = self.add_weight(shape=affine, initializer="ones", name="gamma",
                                     autocast=False)
        self.beta = self.add_weight(shape=affine, initializer="zeros", name="beta",
                                    autocast=False)
        self.moving_mean = self.add_weight(shape=stats, initializer="zeros", name="moving_mean",
                                           trainable=False, autocast=False)
        self.moving_variance = self.add_weight(shape=stats, initializer="ones",
                                               name="moving_variance", trainable=False,
                                               autocast=False)

    def _per_time(self, values, rank):
        """`[T, C]` -> broadcastable against `[batch, T, ..., C]` inputs of rank `rank`."""
        return tf.reshape(values, [1, values.shape[0]] + [1] * (rank - 3) + [values.shape[1]])

    def _rows(self, values, timesteps):
        """Per-timestep `[T_kept, C]` values for `timesteps` timesteps: beyond the kept ones, the
        last one's."""
        return tf.gather(values, [min(t, self.timesteps - 1) for t in range(timesteps)])

    def inference_statistics(self, timesteps):
        """Moving mean and variance for `timesteps` timesteps, each `[timesteps, channels]`."""
        mean, variance = self.moving_mean, self.moving_variance
        if self.mode not in _PER_TIMESTEP_STATISTICS:
            return tf.tile(mean[None], [timesteps, 1]), tf.tile(variance[None], [timesteps, 1])
        return self._rows(mean, timesteps), self._rows(variance, timesteps)

    def batch_statistics(self, inputs):
        """Mean and biased variance of each timestep over batch and positions, `[T, C]`."""
        rank = len(inputs.shape)
        return keras.ops.moments(tf.cast(inputs, tf.float32), axes=[0, *range(2, rank - 1)],
                                 synchronized=self.synchronized)

    def standardize(self, inputs, mean, variance):
        """(inputs - mean) / sqrt(variance + eps) in float32, statistics `[T, C]`."""
        rank = len(inputs.shape)
        return ((tf.cast(inputs, tf.float32) - self._per_time(mean, rank))
                * self._per_time(tf.math.rsqrt(variance + self.epsilon), rank))

    def scale_and_shift(self, standardized):
        """gamma * standardized + beta, per timestep for "bntt"."""
        if self.mode != "bntt":
            return standardized * self.gamma + self.beta
        timesteps, rank = standardized.shape[1], len(standardized.shape)
        return (standardized * self._per_time(self._rows(self.gamma, timesteps), rank)
                + self._per_time(self._rows(self.beta, timesteps), rank))

    def _update_moving_statistics(self, mean, variance):
        timesteps = mean.shape[0]
        if self.mode in _PER_TIMESTEP_STATISTICS:
            if timesteps > self.timesteps:
                raise ValueError(f"This time-specific batch-norm keeps statistics for "
                                 f"{self.timesteps} timesteps; it cannot train on {timesteps}.")
            for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
                head = moving[:timesteps] * self.momentum + batch * (1.0 - self.momentum)
                moving.assign(tf.concat([head, moving[timesteps:]], axis=0))
            return
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            value = moving.value
            for t in range(timesteps):  # one update per timestep, in time order
                value = value * self.momentum + batch[t] * (1.0 - self.momentum)
            moving.assign(value)

    def call(self, inputs, training=None):
        if inputs.shape[1] is None:
            raise ValueError("TemporalBatchNorm needs a static number of timesteps (axis 1).")
        if training and self.trainable:
            mean, variance = self.batch_statistics(inputs)
            self._update_moving_statistics(mean, variance)
        else:
            mean, variance = self.inference_statistics(inputs.shape[1])
        outputs = self.scale_and_shift(self.standardize(inputs, mean, variance))
        return tf.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "timesteps": self.timesteps,
                "momentum": self.momentum, "epsilon": self.epsilon,
                "synchronized": self.synchronized}
