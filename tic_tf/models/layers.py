"""Layers that move between image tensors `[batch, ...]` and spike trains `[batch, time, ...]`."""
import keras
import tensorflow as tf

from tic_tf.kernels import eigen_convolutions


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


def _same_padding(kernel_size):
    """TensorFlow's "same" padding of a stride-1 kernel: (k - 1) // 2 before, the rest after."""
    return (kernel_size - 1) // 2, kernel_size // 2


def _conv_with_forward_input_gradient(inputs, kernel, padding):
    """A stride-1 convolution (NHWC) whose input gradient is the forward convolution of the
    output gradient with the flipped, transposed kernel (padded so as to give the input's
    shape), and whose kernel gradient is TensorFlow's own."""
    (kh, kw), padding = kernel.shape[:2], padding.upper()
    if padding == "SAME":
        (top, bottom), (left, right) = _same_padding(kh), _same_padding(kw)
    else:
        top = bottom = left = right = 0

    @tf.custom_gradient
    def convolve(x, w):
        def gradient(dy):
            flipped = tf.transpose(tf.reverse(w, [0, 1]), [0, 1, 3, 2])
            dx = tf.nn.conv2d(dy, flipped, 1, [[0, 0], [kh - 1 - top, kh - 1 - bottom],
                                                [kw - 1 - left, kw - 1 - right], [0, 0]])
            dw = tf.compat.v1.nn.conv2d_backprop_filter(x, tf.shape(w), dy, [1, 1, 1, 1],
                                                        padding)
            return dx, dw
        return tf.nn.conv2d(x, w, 1, padding), gradient
    return convolve(inputs, kernel)


@keras.saving.register_keras_serializable(package="tic_tf")
class FlippedKernelConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` (same config and weights) whose input gradient, at stride 1 and
    where convolutions run on Eigen's CPU kernels (`kernels.eigen_convolutions`), is the
    forward convolution of the output gradient with the flipped kernel.

    The same values as TensorFlow's own gradient, but Eigen's backprop-input kernel takes
    2.3-4x the time of that forward convolution (3x3, batch 128, 32-128 channels), and
    backward passes dominate training and the exact Fisher estimator. With oneDNN (or on a
    GPU) the backprop-input kernel is as fast, and the exact Fisher curve was slower with the
    flipped kernel, so there, and for strided, dilated, grouped or channels-first
    convolutions, it keeps TensorFlow's gradient.
    """

    def convolution_op(self, inputs, kernel):
        if (not eigen_convolutions() or self.strides != (1, 1) or self.dilation_rate != (1, 1)
                or self.groups != 1 or self.data_format != "channels_last"):
            return super().convolution_op(inputs, kernel)
        return _conv_with_forward_input_gradient(inputs, tf.convert_to_tensor(kernel),
                                                 self.padding)


@keras.saving.register_keras_serializable(package="tic_tf")
class PointwiseConv2D(keras.layers.Conv2D):
    """A 1x1 convolution that, when strided, subsamples first and then convolves at stride 1.

    Equal to `Conv2D(filters, 1, strides=s, padding="same")` (same config and weights), but
    it never computes the discarded positions, and it avoids the strided 1x1 convolution
    gradients of oneDNN in TensorFlow 2.21, which crash the process for some odd batch sizes.
    On Eigen's kernels its input gradient is a forward convolution, as `FlippedKernelConv2D`'s.
    """

    def call(self, inputs):
        if self.strides != (1, 1):  # a 1x1 average pool: 8x faster here than a strided slice
            inputs = keras.ops.average_pool(inputs, 1, self.strides, padding="valid")
        if eigen_convolutions():
            outputs = _conv_with_forward_input_gradient(
                inputs, tf.convert_to_tensor(self.kernel), "valid")
        else:
            outputs = keras.ops.conv(inputs, self.kernel, strides=1, padding="valid")
        if self.use_bias:
            outputs = outputs + self.bias
        return outputs
