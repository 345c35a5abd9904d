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
the model's precision, all-reduced over replicas when `synchronized`. Training runs
TensorFlow's fused batch-norm kernel on one replica, and written-out passes when the moments
are all-reduced.
"""
import math

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

    def _rows(self, values, timesteps, first=0):
        """Per-timestep `[T_kept, C]` values for `timesteps` timesteps from timestep `first`:
        beyond the kept ones, the last one's."""
        return tf.gather(values, [min(t, self.timesteps - 1)
                                  for t in range(first, first + timesteps)])

    def inference_statistics(self, timesteps):
        """Moving mean and variance for `timesteps` timesteps, each `[timesteps, channels]`."""
        mean, variance = self.moving_mean, self.moving_variance
        if self.mode not in _PER_TIMESTEP_STATISTICS:
            return tf.tile(mean[None], [timesteps, 1]), tf.tile(variance[None], [timesteps, 1])
        return self._rows(mean, timesteps), self._rows(variance, timesteps)

    def _sum_per_time(self, values, over_replicas=True):
        """Sums `[1, T, 1.., C]` of `[batch, T, ..., C]` values over batch and positions (and
        replicas, when synchronized and `over_replicas`). Positions first, then the batch:
        two reductions over contiguous axes run about 20x faster on CPU than one over the
        non-adjacent ones."""
        shape = values.shape
        rows = tf.reshape(values, [-1, shape[1], math.prod(shape[2:-1]), shape[-1]])
        sums = tf.reshape(tf.reduce_sum(tf.reduce_sum(rows, 2), 0),
                          [1, shape[1]] + [1] * (len(shape) - 3) + [shape[-1]])
        return self._all_sum(sums) if over_replicas else sums

    def _moments(self, inputs):
        """Per-timestep mean and biased variance `[1, T, 1.., C]` of float32 `inputs`, and the
        count of values behind each."""
        count = self._all_sum(tf.cast(tf.size(inputs) // (inputs.shape[1] * inputs.shape[-1]),
                                      tf.float32))
        mean = self._sum_per_time(inputs) / count
        return mean, self._sum_per_time(tf.math.squared_difference(inputs, mean)) / count, count

    def batch_statistics(self, inputs):
        """Mean and biased variance of each timestep over batch and positions, `[T, C]`."""
        mean, variance, _ = self._moments(tf.cast(inputs, tf.float32))
        return tf.reshape(mean, [inputs.shape[1], -1]), tf.reshape(variance,
                                                                    [inputs.shape[1], -1])

    def standardize(self, inputs, mean, variance):
        """(inputs - mean) / sqrt(variance + eps) in float32, statistics `[T, C]`."""
        rank = len(inputs.shape)
        return ((tf.cast(inputs, tf.float32) - self._per_time(mean, rank))
                * self._per_time(tf.math.rsqrt(variance + self.epsilon), rank))

    def scale_and_shift(self, standardized, first_timestep=0):
        """gamma * standardized + beta, per timestep for "bntt" (`standardized` holds the
        timesteps from `first_timestep` on)."""
        gamma, beta = self._gamma_and_beta(standardized.shape[1], len(standardized.shape),
                                           first_timestep)
        return standardized * gamma + beta

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
        # T updates in time order, value <- momentum * value + (1 - momentum) * batch[t], in
        # closed form: a few ops instead of 4T small ones (the benchmark's training peak
        # memory 60-85 MB lower at T=10 and T=4, its speed the same within noise).
        weights = tf.constant([(1.0 - self.momentum) * self.momentum ** (timesteps - 1 - t)
                               for t in range(timesteps)])
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            moving.assign(moving * self.momentum ** timesteps
                          + tf.linalg.matvec(batch, weights, transpose_a=True))

    def _all_sum(self, values):
        """`values` summed over the replicas when synchronized (else themselves)."""
        if not self.synchronized or not tf.distribute.get_replica_context():
            return values
        return tf.distribute.get_replica_context().all_reduce("sum", values)

    def _normalize_in_training(self, inputs, gamma, beta):
        """Training-mode batch-norm of float32 `inputs` with per-timestep batch moments
        all-reduced over the replicas, and the moments `[1, T, 1.., C]`. Forward and backward
        are written out (the backward is the closed form of batch-norm's gradient), each a few
        passes over the features: the same values as differentiating the moments op by op
        (38 -> 5.9 ms forward and backward on a [32, 4, 32, 32, 32] map here, with
        `_sum_per_time`'s sums)."""
        rank = len(inputs.shape)

        @tf.custom_gradient
        def normalize(x, gamma, beta):
            mean, variance, count = self._moments(x)
            inverse = tf.math.rsqrt(variance + self.epsilon)
            scale = gamma * inverse
            outputs = x * scale + (beta - mean * scale)

            def gradient(upstream, *moment_gradients):  # the moments only feed the updates
                # This replica's sums: its share of the scale and offset gradients.
                upstream_sum = self._sum_per_time(upstream, over_replicas=False)
                projection = (self._sum_per_time(upstream * x, over_replicas=False)
                              - mean * upstream_sum) * inverse  # sum of upstream * x_hat
                # Through the moments, every replica's inputs reach every output.
                upstream_mean = self._all_sum(upstream_sum) / count
                slope = scale * inverse * self._all_sum(projection) / count
                return (upstream * scale - x * slope + (mean * slope - scale * upstream_mean),
                        projection, upstream_sum)

            return (outputs, mean, variance), gradient

        shape = [1, inputs.shape[1]] + [1] * (rank - 3) + [inputs.shape[-1]]
        return normalize(inputs, tf.broadcast_to(gamma, shape), tf.broadcast_to(beta, shape))

    def _fused_normalize_in_training(self, inputs, gamma, beta):
        """`_normalize_in_training` of one replica's `inputs`, in their own dtype, by
        TensorFlow's fused batch-norm kernel (oneDNN's on CPU), forward and backward. Each
        (timestep, channel) is made a channel of its own, so the kernel's statistics are the
        per-timestep ones: under bfloat16 the layer's forward and backward take half the time
        of the written-out passes, which need float32 copies (40 -> 21 ms on a
        [32, 10, 32, 32, 32] map here; float32 about the same)."""
        shape, rank = inputs.shape, len(inputs.shape)
        timesteps, channels = shape[1], shape[-1]
        positions = math.prod(shape[2:-1])
        by_position = tf.transpose(tf.reshape(inputs, [-1, timesteps, positions, channels]),
                                   [0, 2, 1, 3])
        per_channel = lambda values: tf.reshape(  # noqa: E731
            tf.broadcast_to(values, [1, timesteps] + [1] * (rank - 3) + [channels]), [-1])
        outputs, mean, unbiased_variance = tf.compat.v1.nn.fused_batch_norm(
            tf.reshape(by_position, [-1, positions, 1, timesteps * channels]),
            per_channel(gamma), per_channel(beta), epsilon=self.epsilon, is_training=True)
        outputs = tf.reshape(tf.transpose(tf.reshape(outputs, [-1, positions, timesteps,
                                                               channels]), [0, 2, 1, 3]),
                             [-1, *shape[1:]])
        count = tf.cast(tf.size(inputs) // (timesteps * channels), tf.float32)
        # The kernel returns the unbiased variance; the moving statistics take the biased one.
        variance = unbiased_variance * tf.maximum(count - 1.0, 0.0) / count
        return outputs, *(self._per_time(tf.reshape(moment, [timesteps, channels]), rank)
                          for moment in (mean, variance))

    def _gamma_and_beta(self, timesteps, rank, first=0):
        """Scale and offset, broadcastable against `[batch, T, ..., C]` inputs that hold the
        timesteps from `first` on."""
        if self.mode != "bntt":
            return self.gamma, self.beta
        return (self._per_time(self._rows(self.gamma, timesteps, first), rank),
                self._per_time(self._rows(self.beta, timesteps, first), rank))

    def call(self, inputs, training=None):
        if inputs.shape[1] is None:
            raise ValueError("TemporalBatchNorm needs a static number of timesteps (axis 1).")
        timesteps, rank = inputs.shape[1], len(inputs.shape)
        if training and self.trainable:
            gamma, beta = self._gamma_and_beta(timesteps, rank)
            if self.synchronized:  # the moments all-reduced over the replicas
                outputs, mean, variance = self._normalize_in_training(
                    tf.cast(inputs, tf.float32), gamma, beta)
            else:
                outputs, mean, variance = self._fused_normalize_in_training(
                    tf.cast(inputs, self.compute_dtype), gamma, beta)
            self._update_moving_statistics(tf.reshape(mean, [timesteps, -1]),
                                           tf.reshape(variance, [timesteps, -1]))
        else:
            outputs = self.normalize_in_inference(tf.cast(inputs, tf.float32))
        return tf.cast(outputs, self.compute_dtype)

    def normalize_in_inference(self, inputs, first_timestep=0):
        """Inference-mode batch-norm of float32 `inputs` that hold the timesteps from
        `first_timestep` on: one multiply-add, the statistics and gamma, beta folded into a
        scale and an offset."""
        timesteps, rank = inputs.shape[1], len(inputs.shape)
        gamma, beta = self._gamma_and_beta(timesteps, rank, first_timestep)
        mean, variance = (self._per_time(values[first_timestep:], rank) for values
                          in self.inference_statistics(first_timestep + timesteps))
        scale = gamma * tf.math.rsqrt(variance + self.epsilon)
        return self._affine(inputs, scale, beta - mean * scale)

    def _affine(self, inputs, scale, shift):
        """inputs * scale + shift for per-timestep `[1, T, 1.., C]` scale and shift, with the
        gradient written out (autodiff would reduce over the non-adjacent axes, see
        `_sum_per_time`), as attacks and the Fisher estimator differentiate in inference."""
        @tf.custom_gradient
        def affine(x, scale, shift):
            def gradient(upstream):
                return (upstream * scale,
                        self._sum_per_time(upstream * x, over_replicas=False),
                        self._sum_per_time(upstream, over_replicas=False))
            return x * scale + shift, gradient

        return affine(inputs, scale, shift)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "timesteps": self.timesteps,
                "momentum": self.momentum, "epsilon": self.epsilon,
                "synchronized": self.synchronized}
