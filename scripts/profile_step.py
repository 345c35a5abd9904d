"""Where a training step or an inference batch spends its time: a per-op profile.

    python scripts/profile_step.py --timesteps=10 --mode=infer --mixed_precision=bfloat16

Builds the benchmark's network (ResNet19, random 32x32x3 inputs, 10 classes), runs --warmup
steps, then records --steps more with TensorFlow's profiler and prints the wall time per step
and the milliseconds per step of each op type and of the costliest single ops (see
`tic_tf.timing.profile_ops`: TensorFlow's kernels, and the XLA-compiled LIF loops together
as "XLA"; ops overlap on two threads, so they may add up to more than the wall time). The
trace stays in --logdir for TensorBoard's profile plugin.
"""
import collections
import tempfile

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from tic_tf.losses import MeanLogitCrossEntropy
from tic_tf.models import PRECISIONS, build_model, fold_batch_norm, set_precision
from tic_tf.timing import profile_ops

flags.DEFINE_integer("timesteps", 10, "Timesteps T.")
flags.DEFINE_enum("mode", "train", ["train", "infer"], "A training step or an inference batch.")
flags.DEFINE_enum("mixed_precision", "none", sorted(PRECISIONS), "Precision.")
flags.DEFINE_float("width", 0.25, "Channel width multiplier.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("warmup", 3, "Untimed steps first (tracing and compilation).")
flags.DEFINE_integer("steps", 5, "Profiled steps.")
flags.DEFINE_integer("top", 15, "Rows of each table.")
flags.DEFINE_string("logdir", None, "Directory for the trace (default: a new temporary one).")
FLAGS = flags.FLAGS


def step_function():
    """One step of --mode on the benchmark's network, returning a value to wait for."""
    set_precision(FLAGS.mixed_precision)
    keras.utils.set_random_seed(0)
    model = build_model("resnet19", 10, FLAGS.timesteps, (32, 32, 3), width=FLAGS.width)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.random((FLAGS.batch_size, 32, 32, 3), dtype=np.float32))
    labels = tf.constant(rng.integers(0, 10, FLAGS.batch_size).astype(np.int32))
    if FLAGS.mode == "infer":
        served = fold_batch_norm(model)  # as the benchmark's inference figure
        infer = tf.function(lambda x: served(x, training=False))
        return lambda: infer(images).numpy()
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), MeanLogitCrossEntropy())
    return lambda: float(model.train_on_batch(images, labels))


def print_table(title, milliseconds, counts):
    print(f"\n{title:<60} {'ms/step':>9} {'calls/step':>10}")
    for key, total in milliseconds.most_common(FLAGS.top):
        print(f"{key[-60:]:<60} {total / FLAGS.steps:9.2f} {counts[key] / FLAGS.steps:10.1f}")


def main(argv):
    del argv
    step = step_function()
    for _ in range(FLAGS.warmup):
        step()
    logdir = FLAGS.logdir or tempfile.mkdtemp(prefix="tic_tf_profile_")
    wall, events = profile_ops(step, FLAGS.steps, logdir)
    by_type, by_op, type_calls, op_calls = (collections.Counter() for _ in range(4))
    for op, kind, ms in events:
        by_type[kind] += ms
        type_calls[kind] += 1
        by_op[op] += ms
        op_calls[op] += 1
    print(f"{FLAGS.mode}, T={FLAGS.timesteps}, {FLAGS.mixed_precision}, batch "
          f"{FLAGS.batch_size}: {1e3 * wall:.1f} ms per step while profiled; trace in {logdir}")
    print_table("op type", by_type, type_calls)
    print_table("op", by_op, op_calls)


if __name__ == "__main__":
    app.run(main)
