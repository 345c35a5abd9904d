"""Temporal Fisher information of a spiking network (Eq. 5-7 of the paper; docs/method.md).

`temporal_fisher` computes, for every t = 1..T,

    I_t = (1/N) sum_n || grad_theta log f(y_n | x_n, timesteps <= t) ||^2,

the squared norm of each sample's own gradient (Eq. 6), exactly, from one forward pass.

How: every parameter lives in a Conv2D, Dense or batch-norm layer. For such a layer,
the gradient of one sample's loss is a sum over that sample's positions (pixels and timesteps)
of (layer input) x (gradient at the layer output). One forward pass records each layer's
input; for each t one backward pass gives the output gradients of the loss L_t of every sample
at once (samples are independent with batch-norm in inference mode, or with batch moments held
constant: `bn_statistics="batch"`); the per-sample weight gradients then follow from a grouped
convolution's kernel gradient (where the kernels have one: `tic_tf.kernels`), a batched matrix
product of image patches, or, where cheaper, the Gram-matrix identity ||X^T D||^2 =
sum((X X^T) * (D D^T)) (for a convolution, X X^T of its image patches follows from its
pixels' Gram matrix, made once for every t). The forward pass runs in a few
chunks of timesteps (`tic_tf.models.stepwise`), so that L_t's backward pass covers the chunks
up to t's only and its products timesteps 1..t (L_t cannot depend on later ones), and the T
backward passes run one at a time, so that one set of output gradients is live at once. No
Python loop over samples, no per-sample forward pass, and no reliance on pfor (which loops for
per-example convolution gradients).
"""
import dataclasses
import math
import re

import keras
import numpy as np
import tensorflow as tf

from tic_tf.compiled import cached, function
from tic_tf.data import to_unit_range
from tic_tf.errors import UserError
from tic_tf.kernels import grouped_filter_gradient
from tic_tf.losses import accumulated_logits, per_timestep_losses
from tic_tf.models import BN_STATISTICS, TemporalBatchNorm, TimeFolded, timesteps_of
from tic_tf.models.graph import run_layers
from tic_tf.models.stepwise import run_timesteps

LABEL_MODES = ("data", "model")
METHODS = ("exact", "batch_mean")
# The exact estimator's forward runs in this many chunks of timesteps, so that L_t's backward
# pass covers the chunks up to t's only. One timestep per chunk covers the fewest, but its
# graph, and with it the memory, grows as T^2: at T=10, batch 32, 16.5 s and 3.15 GB against
# 17.3 s and 2.8 GB with five chunks (20.7-22.3 s and 2.6 GB with one).
_CHUNKS = 5
_BLOCK = re.compile(r"^(stage\d+_block\d+|features\d+|fc\d+|stem|classifier)")


def gumbel_noise(batch, timesteps, classes, seed):
    """Noise for `sample_model_labels`, drawn eagerly: XLA's stateless RNG gives other draws."""
    uniform = tf.random.stateless_uniform([batch, timesteps, classes], seed, minval=1e-20,
                                          maxval=1.0)
    return -tf.math.log(-tf.math.log(uniform))


def sample_model_labels(logits_per_timestep, noise):
    """Labels drawn from the model's own posterior f(y | x, <= t), one per sample and t (Eq. 5).

    Gumbel-max sampling with `noise` from `gumbel_noise`: argmax(logits + noise) is exactly a
    draw from softmax(logits).
    """
    return tf.argmax(accumulated_logits(logits_per_timestep) + noise, axis=-1,
                     output_type=tf.int32)


def information_centroid(values):
    """Eq. 7: IC = sum_t t * I_t / sum_t I_t, with t counted from 1; NaN (undefined) when every
    I_t is zero, as for a network that carries no information yet."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError("information_centroid needs a 1-D sequence of I_t values.")
    if values.min() < 0:
        raise ValueError("information_centroid needs non-negative I_t values.")
    total = values.sum()
    if total == 0:
        return float("nan")
    return float(np.sum(np.arange(1, len(values) + 1) * values) / total)


@dataclasses.dataclass
class FisherResult:
    """I_t for t = 1..T, its information centroid, and optionally I_t per block."""
    values: np.ndarray
    centroid: float
    per_layer: dict
    num_samples: int
    labels: str
    method: str
    bn_statistics: str = "moving"
    conv_routes: dict = dataclasses.field(default_factory=dict)  # route: convolutions taking it

    def to_json(self):
        return {"fisher": self.values.tolist(), "centroid": self.centroid,
                "per_layer": {k: v.tolist() for k, v in self.per_layer.items()},
                "num_samples": self.num_samples, "labels": self.labels, "method": self.method,
                "bn_statistics": self.bn_statistics, "conv_routes": self.conv_routes}


def block_of(layer_name):
    """The block (Fig. 3 granularity) a layer belongs to, e.g. 'stage2_block1' or 'stem'."""
    match = _BLOCK.match(layer_name)
    return match.group(1) if match else layer_name


@dataclasses.dataclass
class _ParamLayer:
    layer: keras.layers.Layer   # the Conv2D / Dense / (Temporal)BatchNormalization itself
    node: keras.layers.Layer    # the layer in the model graph (maybe a TimeFolded wrapper)
    block: int                  # index into the list of block names


def _parameter_layers(model):
    layers, blocks = [], []
    for node in model.layers:
        if not node.trainable_weights:
            continue
        inner = node.layer if isinstance(node, TimeFolded) else node
        if not isinstance(inner, (keras.layers.Conv2D, keras.layers.Dense,
                                  keras.layers.BatchNormalization, TemporalBatchNorm)):
            raise UserError(f"temporal_fisher cannot handle layer {node.name} "
                            f"({type(inner).__name__}); it supports Conv2D, Dense and "
                            "batch-norm parameters.")
        block = block_of(inner.name)
        if block not in blocks:
            blocks.append(block)
        layers.append(_ParamLayer(inner, node, blocks.index(block)))
    return layers, blocks


def _is_batch_norm(layer):
    return isinstance(layer, (keras.layers.BatchNormalization, TemporalBatchNorm))


def _sample_major(tensor):
    """`[batch, ..., channels]` -> `[batch, positions, channels]` (positions known statically)."""
    positions = int(np.prod(tensor.shape[1:-1]))
    return tf.reshape(tensor, [-1, positions, tensor.shape[-1]])


def _sum_sq_products(inputs, deltas):
    """sum_n ||sum_c inputs_c,n^T deltas_c,n||_F^2 for per-chunk pieces inputs_c `[n, P_c, a]`
    and deltas_c `[n, P_c, b]`: the per-sample product over all the chunks' positions.

    Whichever is cheaper: the explicit per-sample product, summed over the chunks without
    joining them (joining copied every piece again for each t: an eighth of the op time of the
    Fisher curve with oneDNN off, T=4), or the Gram identity ||X^T D||^2 = sum((X X^T) * (D D^T)) over
    the joined positions (P^2 (a + b) per sample against P a b), which wins for a Dense
    layer's few positions (its timesteps) and many features.
    """
    positions = sum(piece.shape[1] for piece in inputs)
    a, b = inputs[0].shape[2], deltas[0].shape[2]
    if positions * (a + b) < a * b:
        inputs, delta = tf.concat(inputs, 1), tf.concat(deltas, 1)
        return tf.reduce_sum(tf.matmul(inputs, inputs, transpose_b=True)
                             * tf.matmul(delta, delta, transpose_b=True))
    return tf.reduce_sum(tf.square(tf.add_n([tf.matmul(piece, delta, transpose_a=True)
                                             for piece, delta in zip(inputs, deltas)])))


def _conv_sq_norm(layer, inputs, delta):
    """sum_n ||per-sample gradient of the convolution's kernel||^2 (not 1x1), from its input
    and output gradient with the samples as channels (`_samples_as_channels`), in their
    precision.

    Each sample's kernel is then one group of a grouped convolution, whose kernel gradient is
    every sample's own: one backward-filter convolution for the whole batch, with no image
    patches (nine times the input for a 3x3 kernel) and no loop over samples (slow to
    trace)."""
    groups = tf.shape(delta)[-1] // layer.filters
    kernel_shape = tf.stack([*layer.kernel.shape[:3], groups * layer.filters])
    gradients = tf.compat.v1.nn.conv2d_backprop_filter(
        inputs, kernel_shape, delta, strides=[1, *layer.strides, 1],
        padding=layer.padding.upper(), dilations=[1, *layer.dilation_rate, 1])
    return tf.reduce_sum(tf.square(tf.cast(gradients, tf.float32)))


def _moving_statistics(layer, timesteps):
    """The batch-norm `layer`'s moving mean and variance: `[timesteps, C]` for a per-timestep
    one, `[C]` otherwise."""
    if isinstance(layer, TemporalBatchNorm):
        return layer.inference_statistics(timesteps)
    return layer.moving_mean, layer.moving_variance


def _batch_moments(layer, layer_input, moment_gradients=False):
    """The mean and variance of `layer_input` (float32) that the batch-norm `layer` normalises
    with in training: per timestep `[T, C]` for a per-timestep one, `[C]` otherwise. Unless
    `moment_gradients`, they are constants (no gradient through them), so that samples stay
    independent."""
    if isinstance(layer, TemporalBatchNorm):
        moments = layer.batch_statistics(layer_input)
    else:  # Keras' moments: over all axes but channels, biased variance
        moments = tf.nn.moments(layer_input, list(range(len(layer_input.shape) - 1)))
    return moments if moment_gradients else [tf.stop_gradient(m) for m in moments]


def _normalize(layer, layer_input, mean, variance):
    """(layer_input - mean) / sqrt(variance + eps), for either kind of batch-norm."""
    if isinstance(layer, TemporalBatchNorm):
        return layer.standardize(layer_input, mean, variance)
    return (layer_input - mean) * tf.math.rsqrt(variance + layer.epsilon)


def _normalized(layer, layer_input, mean, variance, first_timestep=0):
    """The batch-norm `layer`'s output for `layer_input` (holding the timesteps from
    `first_timestep` on) normalised with `mean` and `variance`."""
    outputs = _normalize(layer, tf.cast(layer_input, tf.float32), mean, variance)
    if isinstance(layer, TemporalBatchNorm):
        outputs = layer.scale_and_shift(outputs, first_timestep)
    else:
        if layer.scale:
            outputs = outputs * layer.gamma
        if layer.center:
            outputs = outputs + layer.beta
    return tf.cast(outputs, layer.compute_dtype)


def _with_batch_statistics(layer, moment_gradients):
    """A stand-in for the batch-norm `layer`'s node in `run_layers`: normalises with each
    batch's own moments, as training does, but leaves the moving statistics alone."""
    def normalize(layer_input):
        layer_input = tf.cast(layer_input, tf.float32)
        return _normalized(layer, layer_input,
                           *_batch_moments(layer, layer_input, moment_gradients))
    return normalize


def _batch_norm_substitutes(layers, bn_statistics, moment_gradients=False):
    """`run_layers` substitutes that make every batch-norm node use batch statistics."""
    if bn_statistics == "moving":
        return {}
    return {spec.node: _with_batch_statistics(spec.layer, moment_gradients) for spec in layers
            if _is_batch_norm(spec.layer)}


def _frames_major(tensor, node):
    """`[batch, frames, positions, C]` of a node's tensor (frames: its timesteps, or one for
    the stem)."""
    frames = tensor.shape[1] if _is_time_major(node) else 1
    return tf.reshape(tensor, [-1, frames, int(np.prod(tensor.shape[1:-1])) // frames,
                               tensor.shape[-1]])


def _is_time_major(node):
    """Whether the node's tensors are `[batch, time, ...]` (all but the stem's)."""
    return isinstance(node, (TimeFolded, TemporalBatchNorm))


def _conv_route(spec, timesteps):
    """How a convolution's per-sample kernel gradients are computed (None for other layers):

    - "shifted_gram": the Gram identity, with the image patches' Gram matrix made once for
      every t from the pixels' (`_shifted_gram`), where the products are fewer than the grouped
      convolution's and that matrix is at most twice the size of the input it stands for (its
      size grows as T^2): stride-1 convolutions over few pixels and many channels, such as the
      8x8 (at T=4) and 4x4 stages of the benchmark's ResNet19;
    - "patches": from the image patches, `_sum_sq_products`, where the Gram identity is the
      cheaper product for t up to half of T;
    - "grouped": otherwise, one grouped backward-filter convolution per t (`_conv_sq_norm`),
      where this process's kernels run it in the layer's precision
      (`kernels.grouped_filter_gradient`: oneDNN and cuDNN do, Eigen does not);
    - "patches_per_t": else, the products of "patches", which every backend has, with the
      image patches extracted anew for each t, one such layer at a time (kept for every t, as
      "patches" keeps them, they took 1.8 GB more at T=10, batch 32, with oneDNN off).

    Products counted per sample over t = 1..T; the grouped convolution writes every sample's
    kernel gradient (kh kw C_in C_out) for each t.
    """
    layer = spec.layer
    if not isinstance(layer, keras.layers.Conv2D) or layer.kernel_size == (1, 1):
        return None
    frames = timesteps if _is_time_major(spec.node) else 1
    per_t = range(1, timesteps + 1) if frames > 1 else [1] * timesteps  # frames up to each t
    pixels, in_pixels = (int(np.prod(tensor.shape[-3:-1]))
                         for tensor in (spec.node.output, spec.node.input))
    patch, filters = int(np.prod(layer.kernel.shape[:3])), layer.filters
    channels = layer.kernel.shape[2]
    if (layer.strides == (1, 1) and layer.dilation_rate == (1, 1)
            and frames * pixels <= 2 * channels
            and ((frames * in_pixels) ** 2 * channels + sum((f * pixels) ** 2 * filters
                                                           for f in per_t)
                 < sum(f * pixels * patch * filters for f in per_t))):
        return "shifted_gram"
    half = math.ceil(timesteps / 2) if frames > 1 else 1
    if half * pixels * (patch + filters) < patch * filters:
        return "patches"
    return "grouped" if grouped_filter_gradient(layer.compute_dtype) else "patches_per_t"


def _shifted_gram(layer, tensor):
    """The Gram matrix of a stride-1 convolution's image patches, `[n, frames P, frames P]`,
    of `tensor` `[n, frames..., H, W, C]` (P output pixels), in float32.

    A patch is kh kw pixels, so the patches' inner product is a sum of the pixels' inner
    products over the kernel's offsets: made from the pixels' Gram matrix (P^2 C per frame
    pair, against P^2 kh kw C from the patches), once for every t."""
    samples = tf.shape(tensor)[0]
    frames = int(np.prod(tensor.shape[1:-3]))
    height, width, channels = tensor.shape[-3:]
    pixels = tf.reshape(tf.cast(tensor, tf.float32), [samples, -1, channels])
    gram = tf.reshape(tf.matmul(pixels, pixels, transpose_b=True),
                      [samples, frames, height, width, frames, height, width])
    patches = _sum_over_offsets(gram, layer.kernel_size, layer.padding)
    size = frames * patches.shape[2] * patches.shape[3]
    return tf.reshape(patches, [samples, size, size])


def _sum_over_offsets(gram, kernel_size, padding):
    """sum over offsets o of gram[p + o, q + o], for the pixels' Gram matrix `gram`
    `[n, F, H, W, F, H, W]` and a stride-1 kernel: the Gram matrix of its image patches.

    Compiled into one fused pass: unfused, the padded copy and the slices took 88 against
    32 ms (8x8x128 pixels, T=10, batch 32)."""
    kh, kw = kernel_size
    if padding == "same":  # TensorFlow pads (k - 1) // 2 before, the rest after
        rows, cols = ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2)
        gram = tf.pad(gram, [[0, 0], [0, 0], rows, cols, [0, 0], rows, cols])
    out_h, out_w = gram.shape[2] - kh + 1, gram.shape[3] - kw + 1
    gram = tf.add_n([gram[:, :, i:i + out_h, :, :, i:i + out_h] for i in range(kh)])
    return tf.add_n([gram[:, :, :, j:j + out_w, :, :, j:j + out_w] for j in range(kw)])


_sum_over_offsets = function(_sum_over_offsets, jit_compile=True)


def _patches(layer, tensor):
    """The image patches a convolution's kernel multiplies, `[n, positions, kh kw C]`, of
    `tensor` `[n, frames..., H, W, C]` (for a 1x1 one: its pixels, every stride-th)."""
    images = tf.reshape(tensor, [-1, *tensor.shape[-3:]])
    patches = tf.image.extract_patches(
        images, [1, *layer.kernel_size, 1], [1, *layer.strides, 1],
        [1, *layer.dilation_rate, 1], layer.padding.upper())
    return tf.reshape(patches, [tf.shape(tensor)[0], -1, patches.shape[-1]])


def _samples_as_channels(tensor):
    """`[n, frames..., H, W, C]` -> `[frames, H, W, n C]`: each sample a group of channels."""
    samples = tf.shape(tensor)[0]
    height, width, channels = tensor.shape[-3:]
    frames = tf.reshape(tensor, [samples, -1, height, width, channels])
    return tf.reshape(tf.transpose(frames, [1, 2, 3, 0, 4]),
                      [-1, height, width, samples * channels])


def _prepared_inputs(spec, pieces, statistics, chunk, timesteps):
    """What the per-sample gradients of `spec`'s layer read of its input, made once for every
    t from the input's `pieces` (one per chunk of timesteps, or the stem's one):

    - a convolution by the "grouped" `_conv_route`: the samples as channels, `[frames, H, W,
      n C]`, in its precision;
    - by the "shifted_gram" one: its image patches' Gram matrix over all frames, `[n, frames P,
      frames P]` (float32);
    - by the "patches_per_t" one: per chunk the input itself (float32);
    - any other convolution: per chunk its image patches `[n, positions, kh kw C]` (float32);
    - a batch-norm: the input standardised with `statistics`, per chunk `[n, frames,
      positions, C]` (float32);
    - a Dense layer: per chunk `[n, positions, C]` (float32).
    """
    layer = spec.layer
    route = _conv_route(spec, timesteps)
    if route == "grouped":
        return tf.concat([_samples_as_channels(tf.cast(piece, layer.compute_dtype))
                          for piece in pieces], 0)
    if route == "shifted_gram":
        return _shifted_gram(layer, tf.concat(pieces, 1))
    if route == "patches_per_t":  # patches made for each t by `_layer_sq_norm`
        return [tf.cast(piece, tf.float32) for piece in pieces]
    if _is_batch_norm(layer):
        return [_frames_major(_standardized(layer, piece, statistics, index * chunk), spec.node)
                for index, piece in enumerate(pieces)]
    if isinstance(layer, keras.layers.Conv2D):
        return [_patches(layer, tf.cast(piece, tf.float32)) for piece in pieces]
    return [_sample_major(tf.cast(piece, tf.float32)) for piece in pieces]


def _standardized(layer, layer_input, statistics, first_timestep):
    """A batch-norm's input standardised with `statistics` (float32), what its scale's
    per-sample gradient multiplies with the output gradient; `layer_input` holds the timesteps
    from `first_timestep` on (or none, for the stem), `statistics` the mean and variance for
    all T timesteps if per timestep."""
    mean, variance = statistics
    if isinstance(layer, TemporalBatchNorm):  # statistics `[T, C]`
        rows = slice(first_timestep, first_timestep + layer_input.shape[1])
        mean, variance = mean[rows], variance[rows]
    return _normalize(layer, tf.cast(layer_input, tf.float32), mean, variance)


def _sq_norm_of_sums(layer, per_frame):
    """sum_n ||g_n||^2 where g_n, a sample's gradient of the batch-norm's offset or scale,
    sums `per_frame` `[n, frames, C]` (its terms summed over each frame's positions) over
    the frames each parameter acts on: all of them, or for "bntt" its own timestep's (the last
    one's parameters also act on every timestep beyond those kept)."""
    if not (isinstance(layer, TemporalBatchNorm) and layer.mode == "bntt"):
        return tf.reduce_sum(tf.square(tf.reduce_sum(per_frame, 1)))
    kept = layer.timesteps
    if per_frame.shape[1] > kept:
        per_frame = tf.concat([per_frame[:, :kept - 1],
                               tf.reduce_sum(per_frame[:, kept - 1:], 1, keepdims=True)], 1)
    return tf.reduce_sum(tf.square(per_frame))


def _layer_sq_norm(spec, inputs, deltas, timesteps, total_timesteps):
    """sum over samples of ||per-sample gradient of L_t w.r.t. this layer's parameters||^2.

    inputs: the layer's `_prepared_inputs`. deltas: the gradients of L_t (summed over
    samples) at the layer's output, one per chunk up to t's (zero beyond t: L_t cannot depend
    on later timesteps), or for the stem, which runs once and feeds every timestep, one.
    timesteps: t; total_timesteps: the model's T.
    Computed in float32, whatever the model's precision, but for a 16-bit convolution's
    per-sample kernel gradients: in its own precision, as its training gradients are (its
    inputs and output gradients are 16-bit already), each then squared in float32.
    """
    layer = spec.layer
    if _is_batch_norm(layer):
        rows = [_frames_major(tf.cast(delta, tf.float32), spec.node) for delta in deltas]
        offset = tf.concat([tf.reduce_sum(row, 2) for row in rows], 1)
        scale = tf.concat([tf.reduce_sum(row * features, 2)
                           for row, features in zip(rows, inputs)], 1)
        if isinstance(layer, TemporalBatchNorm):  # always with offset and scale
            return _sq_norm_of_sums(layer, offset) + _sq_norm_of_sums(layer, scale)
        return ((_sq_norm_of_sums(layer, offset) if layer.center else 0.0)
                + (_sq_norm_of_sums(layer, scale) if layer.scale else 0.0))
    route = _conv_route(spec, total_timesteps)
    frames = timesteps if _is_time_major(spec.node) else 1
    if route == "grouped":
        # The first t frames (the stem's one); slicing the leading axis copies nothing.
        total = _conv_sq_norm(layer, inputs[:frames], tf.concat(
            [_samples_as_channels(tf.cast(delta, layer.compute_dtype))
             for delta in deltas], 0)[:frames])
    elif route == "shifted_gram":  # ||X^T D||^2 = sum(D * (X X^T) D), of the first t frames
        delta = tf.cast(tf.concat(deltas, 1), tf.float32)
        delta = _sample_major(delta[:, :frames] if _is_time_major(spec.node) else delta)
        size = delta.shape[1]
        total = tf.reduce_sum(delta * tf.matmul(inputs[:, :size, :size], delta))
    else:
        inputs = inputs[:len(deltas)]
        if route == "patches_per_t":
            inputs = [_patches(layer, piece) for piece in inputs]
        total = _sum_sq_products(inputs, [_sample_major(tf.cast(delta, tf.float32))
                                          for delta in deltas])
    if not layer.use_bias:
        return total
    return total + tf.reduce_sum(tf.square(tf.add_n(
        [tf.reduce_sum(_sample_major(tf.cast(delta, tf.float32)), 1) for delta in deltas])))


class _ExactFisher:
    """Compiled per-batch computation of sum_n ||grad L_t(x_n)||^2, per block and t."""

    def __init__(self, model, labels, bn_statistics, jit_compile):
        self.layers, self.blocks = _parameter_layers(model)
        self.bn_statistics = bn_statistics
        self.substitutes = _batch_norm_substitutes(self.layers, bn_statistics)
        covered = sum(len(spec.layer.trainable_weights) for spec in self.layers)
        if covered != len(model.trainable_weights):  # e.g. weights inside a nested model
            raise UserError("temporal_fisher found trainable weights outside the model's "
                            "Conv2D, Dense and batch-norm layers; it supports models made by "
                            "tic_tf.models.build_model.")
        self.model = model
        self.labels = labels
        self.timesteps = timesteps_of(model)
        self.routes = [_conv_route(spec, self.timesteps) for spec in self.layers]
        self.conv_routes = {route: self.routes.count(route)
                            for route in sorted(set(self.routes) - {None})}
        self.batch_sums = function(self._batch_sums, jit_compile=jit_compile)

    def _batch_sums(self, images, labels, noise):
        statistics = self._batch_norm_statistics(images)
        chunk = math.ceil(self.timesteps / _CHUNKS)
        # How many chunks hold timesteps 1..t, for each t.
        reached = {t: math.ceil(t / chunk) for t in range(1, self.timesteps + 1)}
        with tf.GradientTape(persistent=True) as tape:
            logits, records = run_timesteps(
                self.model, images, record=[spec.node for spec in self.layers],
                substitute=self._normalizing_with(statistics), chunk=chunk)
            if self.labels == "model":
                labels = tf.stop_gradient(sample_model_labels(tf.concat(logits, 1), noise))
            # Summed over samples: samples are independent, so the gradient at each sample's
            # layer outputs is that sample's own. Each L_t from the chunks up to t's alone, so
            # that its gradient touches no later chunk. Inside the tape, or it is not recorded.
            loss_per_t = [tf.reduce_sum(per_timestep_losses(
                tf.concat(logits[:reached[t]], 1),
                labels if labels.shape.rank == 1 else labels[:, :reached[t] * chunk]
            )[:, t - 1]) for t in range(1, self.timesteps + 1)]
        # Each layer's inputs, as its per-sample gradients read them, made once for every t.
        inputs = [_prepared_inputs(spec, [pieces[i][0] for pieces in records]
                                   if _is_time_major(spec.node) else [records[0][i][0]],
                                   statistics.get(spec.layer), chunk, self.timesteps)
                  for i, spec in enumerate(self.layers)]
        per_t, previous = [], []
        for t, loss in enumerate(loss_per_t, start=1):
            # The layers' outputs in the chunks up to t's (the stem's: once).
            outputs = [[pieces[i][1] for pieces in records[:reached[t]]]
                       if _is_time_major(spec.node) else [records[0][i][1]]
                       for i, spec in enumerate(self.layers)]
            # One t at a time: unordered, all T sets of output gradients would be live at once
            # (memory ~ batch x T^2 activations); two at a time were 3% faster and took 0.4 GB
            # more at T=10, batch 32.
            with tf.control_dependencies(previous):
                deltas = iter(tape.gradient(
                    loss, [output for pieces in outputs for output in pieces],
                    unconnected_gradients=tf.UnconnectedGradients.ZERO))
                per_block = [0.0] * len(self.blocks)
                extracting = []  # the last layer that extracts image patches for this t
                for spec, route, layer_inputs, pieces in zip(self.layers, self.routes, inputs,
                                                             outputs):
                    layer_deltas = [next(deltas) for _ in pieces]
                    # One such layer at a time, or every layer's patches would be live at once.
                    with tf.control_dependencies(extracting):
                        value = _layer_sq_norm(spec, layer_inputs, layer_deltas, t,
                                               self.timesteps)
                    if route == "patches_per_t":
                        extracting = [value]
                    per_block[spec.block] += value
            per_t.append(tf.stack(per_block))
            previous = per_t[-1:]
        return tf.stack(per_t, axis=1)  # [blocks, T]

    def _batch_norm_statistics(self, images):
        """{batch-norm layer: (mean, variance)} it normalises with: the moving statistics, or
        this batch's moments (from a pass over all timesteps: shared statistics need them)."""
        norms = [spec for spec in self.layers if _is_batch_norm(spec.layer)]
        if self.bn_statistics == "moving":
            return {spec.layer: _moving_statistics(spec.layer, self.timesteps) for spec in norms}
        _, pairs = run_layers(self.model, images, substitute=self.substitutes,
                              record=[spec.node for spec in norms])
        return {spec.layer: _batch_moments(spec.layer, tf.cast(layer_input, tf.float32))
                for spec, (layer_input, _) in zip(norms, pairs)}

    def _normalizing_with(self, statistics):
        """`run_timesteps` substitutes that normalise every batch-norm with `statistics`; none
        with the moving ones (the model's own layers use those)."""
        if self.bn_statistics == "moving":
            return {}

        def at_timestep(layer):
            def normalize(layer_input, first_timestep):
                mean, variance = statistics[layer]
                if isinstance(layer, TemporalBatchNorm):
                    rows = slice(first_timestep, first_timestep + layer_input.shape[1])
                    mean, variance = mean[rows], variance[rows]
                return _normalized(layer, layer_input, mean, variance, first_timestep)
            return normalize
        return {spec.node: at_timestep(spec.layer) for spec in self.layers
                if spec.layer in statistics}


class _BatchMeanFisher:
    """The reference code's approximation: sum over batches of ||grad of the batch-mean L_t||^2."""

    def __init__(self, model, bn_statistics, jit_compile):
        self.model = model
        # With batch statistics, gradients flow through the moments, as in model.train().
        self.substitutes = _batch_norm_substitutes(_parameter_layers(model)[0], bn_statistics,
                                                   moment_gradients=True)
        self.batch_values = function(self._batch_values, jit_compile=jit_compile)

    def _batch_values(self, images, labels):
        with tf.GradientTape(persistent=True) as tape:
            logits, _ = run_layers(self.model, images, substitute=self.substitutes)
            losses = tf.unstack(tf.reduce_mean(per_timestep_losses(logits, labels), axis=0))
        return tf.stack([tf.add_n([tf.reduce_sum(tf.square(g)) for g in
                                   tape.gradient(loss, self.model.trainable_variables)])
                         for loss in losses])


def _estimator(model, method, labels, bn_statistics, jit_compile):
    """Compiled once per model and settings (monitoring and benchmarks call repeatedly)."""
    return cached(model, ("fisher", method, labels, bn_statistics, jit_compile),
                  lambda: _ExactFisher(model, labels, bn_statistics, jit_compile)
                  if method == "exact" else _BatchMeanFisher(model, bn_statistics, jit_compile))


def _take_samples(data, num_samples):
    """The first `num_samples` (images, labels) from arrays or a tf.data.Dataset of batches."""
    if isinstance(data, tf.data.Dataset):
        images, labels, count = [], [], 0
        for x, y in data.as_numpy_iterator():
            images.append(x)
            labels.append(y)
            count += len(x)
            if count >= num_samples:
                break
        if not images:
            raise UserError("temporal_fisher got an empty dataset.")
        data = (np.concatenate(images), np.concatenate(labels))
    images, labels = (np.asarray(a) for a in data)
    if len(images) == 0:
        raise UserError("temporal_fisher got no samples.")
    if len(images) != len(labels):
        raise UserError(f"temporal_fisher got {len(images)} images but {len(labels)} labels.")
    if num_samples > len(images):
        raise UserError(f"num_samples={num_samples} exceeds the {len(images)} samples given; "
                        "lower num_samples or pass more data.")
    return to_unit_range(images[:num_samples]), labels[:num_samples].astype(np.int32)


def temporal_fisher(model, data, num_samples, labels="data", per_layer=False, batch_size=32,
                    method="exact", seed=0, jit_compile=False, bn_statistics="moving"):
    """I_t for t = 1..T of a `build_model` network, its information centroid, per-block values.

    data: `(images, labels)` arrays (images in [0, 1] or uint8) or a tf.data.Dataset of such
    batches; the first `num_samples` are used. labels: "data" (empirical Fisher, Eq. 6) or
    "model" (labels drawn from the model's prediction up to each t, Eq. 5; seeded by `seed`).
    method: "exact" (per-sample gradients, Eq. 6) or "batch_mean", the reference code's
    approximation: the squared gradient of the mean loss of each batch of `batch_size`
    samples, summed over batches (so it grows with the number of batches).
    per_layer adds I_t restricted to each block's parameters.
    bn_statistics: "moving" (batch-norm in inference mode, as the reference measures) or
    "batch" (each batch of `batch_size` normalised with its own moments, per timestep where the
    model's batch-norm is per-timestep, as in training). With "batch" the exact estimator takes
    the moments as constants, so that samples stay independent and Eq. 6 stays exact; the
    batch-mean approximation lets gradients flow through them, as the reference's
    `model.train()` would. Either way the model's variables, moving statistics included, are
    not changed.
    """
    if labels not in LABEL_MODES:
        raise UserError(f"labels must be one of {LABEL_MODES}, got {labels!r}.")
    if method not in METHODS:
        raise UserError(f"method must be one of {METHODS}, got {method!r}.")
    if bn_statistics not in BN_STATISTICS:
        raise UserError(f"bn_statistics must be one of {BN_STATISTICS}, got {bn_statistics!r}.")
    if int(num_samples) < 1 or int(batch_size) < 1:
        raise UserError("num_samples and batch_size must be positive.")
    timesteps = timesteps_of(model)
    if timesteps < 2:
        raise UserError("Temporal Fisher information needs a model with at least 2 timesteps; "
                        "this one has 1 (rebuild it with with_timesteps(model, T)).")
    images, targets = _take_samples(data, int(num_samples))
    classes = model.output.shape[-1]
    if targets.min() < 0 or targets.max() >= classes:
        raise UserError(f"Labels must lie in [0, {classes - 1}] for this model.")

    if method == "batch_mean":
        if labels != "data" or per_layer:
            raise UserError("method='batch_mean' supports only labels='data' without per_layer.")
        approximate = _estimator(model, method, labels, bn_statistics, jit_compile)
        values = sum(approximate.batch_values(images[start:start + batch_size],
                                              targets[start:start + batch_size]).numpy()
                     for start in range(0, len(images), batch_size))
        return FisherResult(values, information_centroid(values), {}, len(images), labels,
                            method, bn_statistics)

    exact = _estimator(model, method, labels, bn_statistics, jit_compile)
    totals = np.zeros((len(exact.blocks), timesteps))
    for index, start in enumerate(range(0, len(images), batch_size)):
        batch = images[start:start + batch_size]
        noise = (gumbel_noise(len(batch), timesteps, classes, tf.constant([seed, index], tf.int64))
                 if labels == "model" else None)
        totals += exact.batch_sums(batch, targets[start:start + batch_size], noise).numpy()
    totals /= len(images)
    values = totals.sum(axis=0)
    blocks = {name: totals[i] for i, name in enumerate(exact.blocks)} if per_layer else {}
    return FisherResult(values, information_centroid(values), blocks, len(images), labels,
                        method, bn_statistics, exact.conv_routes)
