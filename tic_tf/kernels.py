"""What this process's TensorFlow kernels and CPU can do, asked once per process.

Some of tic_tf's fastest routes use an operation that only some kernel libraries accept: the
exact Fisher estimator's grouped backward-filter convolution runs on oneDNN's CPU kernels and on
cuDNN, but Eigen's CPU kernels (TensorFlow's default on CPUs without AVX512-VNNI, AVX512-BF16
or AMX, and everywhere with `TF_ENABLE_ONEDNN_OPTS=0`) refuse it. Such routes ask here first
and fall back to operations every backend has; the answers are reported (`report`), so a
figure says which kernels produced it.
"""
import functools
import os

import numpy as np
import tensorflow as tf

from tic_tf.compiled import function

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
NATIVE_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=None)
def grouped_filter_gradient(dtype):
    """Whether `Conv2DBackpropFilter` with a grouped filter (fewer input channels in the filter
    than in the input) runs in `dtype` on this process's default device and gives the right
    answer. Probed once per dtype with a tiny graph-mode op, as the estimator runs it (and
    eagerly, out of any function being traced: routes are chosen while tracing)."""
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((2, 4, 4, 2)).astype(np.float32)   # 2 groups of 1 channel
    delta = rng.standard_normal((2, 4, 4, 2)).astype(np.float32)    # 1 filter per group
    # Group g's kernel gradient: its input channel correlated with its output channel.
    padded = np.pad(inputs, [(0, 0), (1, 1), (1, 1), (0, 0)])
    expected = np.stack([[[np.sum(padded[:, i:i + 4, j:j + 4, g] * delta[..., g])
                           for g in range(2)] for j in range(3)] for i in range(3)])

    @function
    def grouped(inputs, delta):
        return tf.compat.v1.nn.conv2d_backprop_filter(
            inputs, [3, 3, 1, 2], delta, strides=[1, 1, 1, 1], padding="SAME")

    with tf.init_scope():
        try:
            got = tf.cast(grouped(tf.cast(inputs, dtype), tf.cast(delta, dtype)), tf.float32)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError,
                tf.errors.NotFoundError):
            return False
        tolerance = 0.05 if tf.as_dtype(dtype).size == 2 else 1e-5
        return bool(np.allclose(got.numpy()[:, :, 0, :], expected, rtol=tolerance,
                                atol=tolerance))


@functools.lru_cache(maxsize=None)
def eigen_convolutions():
    """Whether this process's convolutions run on Eigen's CPU kernels (TensorFlow on a CPU
    without oneDNN): no GPU, and no grouped backward-filter convolution, which Eigen's kernels
    alone refuse. Eigen's backprop-input convolution takes 2.3-4x the time of its forward one,
    so `tic_tf.models.layers` computes input gradients as forward convolutions there."""
    return not tf.config.list_physical_devices("GPU") and not grouped_filter_gradient("float32")


def _cpuinfo(field):
    """The first value of `field` in Linux's /proc/cpuinfo, or None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_flags():
    """The CPU's feature flags, or None where they cannot be read."""
    flags = _cpuinfo("flags")
    return None if flags is None else frozenset(flags.split())


def native_bfloat16():
    """Whether bfloat16 arithmetic runs natively here: on a GPU, or a CPU with AVX512-BF16 or
    AMX. False where the CPU lacks both (TensorFlow then emulates it, slower than float32);
    None where the CPU's flags cannot be read."""
    if tf.config.list_physical_devices("GPU"):
        return True
    flags = cpu_flags()
    if flags is None:
        return None
    return any(flag in flags for flag in NATIVE_BFLOAT16_FLAGS)


def report():
    """The CPU and kernel facts behind this process's figures, for logs and JSON."""
    flags = cpu_flags() or frozenset()
    return {"cpu": _cpuinfo("model name"),
            "cpu_flags": sorted(flags & {"avx2", "fma", "avx512f", "avx512_vnni",
                                         *NATIVE_BFLOAT16_FLAGS}),
            "onednn_opts": os.environ.get(ONEDNN_VARIABLE, "unset (TensorFlow's default)"),
            "native_bfloat16": native_bfloat16(),
            "grouped_filter_gradient": {dtype: grouped_filter_gradient(dtype)
                                        for dtype in ("float32", "bfloat16")},
            "eigen_convolutions": eigen_convolutions()}
