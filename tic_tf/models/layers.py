"""Layers that move between image tensors `[batch, ...]` and spike trains `[batch, time, ...]`."""
import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tic_tf")
class RepeatOverTime(keras.layers.Layer):
    """Direct input coding: the same tensor is the input at every timestep.

    This is the only layer that knows the number of timesteps, so a model runs at another T
    by changing this layer's config (see `tic_tf.models.with_timesteps`).
    """

    def __init__(self, timesteps, **kwargs):
        super().__init__(**kwargs)
        self.timesteps = int(timesteps)

    def call(self, inputs):
        return tf.repeat(tf.expand_dims(inputs, 1), self.timesteps, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.timesteps, *input_shape[1:])

    def get_config(self):
        return {**super().get_config(), "timesteps": self.timesteps}


@keras.saving.register_keras_serializable(package="tic_tf")
class TimeFolded(keras.layers.Wrapper):
    """Applies a stateless layer to all timesteps at once by folding time into the batch.

    Unlike `keras.layers.TimeDistributed` (which maps over time), one large convolution over
    `batch * time` images runs far faster, and batch-norm sees the statistics of all timesteps.
    """

    def build(self, input_shape):
        if not self.layer.built:  # a deserialised inner layer arrives built
            self.layer.build((None, *input_shape[2:]))
        self.built = True

    def call(self, inputs, training=None):
        timesteps = inputs.shape[1]
        folded = tf.reshape(inputs, [-1, *inputs.shape[2:]])
        outputs = self.layer(folded, training=training)
        return tf.reshape(outputs, [-1, timesteps, *outputs.shape[1:]])

    def compute_output_shape(self, input_shape):
        inner = self.layer.compute_output_shape((None, *input_shape[2:]))
        return (input_shape[0], input_shape[1], *inner[1:])


@keras.saving.register_keras_serializable(package="tic_tf")
class PointwiseConv2D(keras.layers.Conv2D):
    """A 1x1 convolution that, when strided, subsamples first and then convolves at stride 1.

    Equal to `Conv2D(filters, 1, strides=s, padding="same")` (same config and weights), but
    it never computes the discarded positions, and it avoids the strided 1x1 convolution
    gradients of oneDNN in TensorFlow 2.21, which crash the process for some odd batch sizes.
    """

    def call(self, inputs):
        if self.strides != (1, 1):  # a 1x1 average pool: 8x faster here than a strided slice
            inputs = keras.ops.average_pool(inputs, 1, self.strides, padding="valid")
        outputs = keras.ops.conv(inputs, self.kernel, strides=1, padding="valid")
        if self.use_bias:
            outputs = outputs + self.bias
        return outputs
