"""Benchmark: the exact temporal Fisher curve against a per-sample loop and a training epoch.

    python scripts/bench_fisher.py --timesteps=4 --timesteps=10 --json=fisher_bench.json

For ResNet19 (width 1/4, 32x32x3, 10 classes, random inputs) and each T, times:
  exact       tic_tf.fisher.temporal_fisher over --samples samples (I_1..I_T, per-sample),
              and the peak memory while it runs
  batch_mean  the reference code's procedure (batch-mean gradient per batch of 16)
  loop        one GradientTape per sample and per t, eager (the plain Python loop) and
              compiled, timed on --loop_samples samples and scaled linearly to --samples
  epoch       one training epoch (forward + backward + SGD update) over the same samples
Each figure is the median of --repeats runs after a warm-up run (compilation excluded).
"""
import json

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from tic_tf.timing import PeakMemory, machine, median_time
from tic_tf.fisher import temporal_fisher
from tic_tf.losses import per_timestep_losses
from tic_tf.losses import MeanLogitCrossEntropy
from tic_tf.models import build_model

flags.DEFINE_multi_integer("timesteps", [4, 10], "Timesteps to benchmark.")
flags.DEFINE_float("width", 0.25, "ResNet19 width multiplier.")
flags.DEFINE_integer("samples", 256, "Samples in the Fisher curve.")
flags.DEFINE_integer("loop_samples", 16, "Samples timed for the per-sample loop.")
flags.DEFINE_integer("batch_size", 32, "Batch size of the exact estimator and the epoch.")
flags.DEFINE_integer("repeats", 3, "Timed runs per figure (median reported).")
flags.DEFINE_boolean("xla", False, "Compile the Fisher estimators and the compiled loop with XLA "
                     "(the training epoch always uses XLA, the training default).")
flags.DEFINE_string("json", None, "Write the figures to this JSON file.")
FLAGS = flags.FLAGS


def per_sample_loop(model, images, labels, compiled):
    """The brute-force reference: one GradientTape per sample and per t."""
    steps = model.output.shape[1]

    def squared_norm(image, label, t):
        with tf.GradientTape() as tape:
            loss = per_timestep_losses(model(image, training=False), label)[0, t]
        grads = tape.gradient(loss, model.trainable_variables)
        return tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads])

    if compiled:
        squared_norm = tf.function(squared_norm, jit_compile=FLAGS.xla)

    def run():
        for n in range(len(images)):
            for t in range(steps):
                squared_norm(images[n:n + 1], labels[n:n + 1], tf.constant(t)).numpy()
    return run


def bench(steps):
    rng = np.random.default_rng(0)
    images = rng.random((FLAGS.samples, 32, 32, 3), dtype=np.float32)
    labels = rng.integers(0, 10, FLAGS.samples).astype(np.int32)
    model = build_model("resnet19", 10, steps, (32, 32, 3), width=FLAGS.width)
    data = (images, labels)
    figures = {"timesteps": steps, "samples": FLAGS.samples}
    with PeakMemory() as peak:
        figures["exact_s"] = median_time(lambda: temporal_fisher(
            model, data, FLAGS.samples, batch_size=FLAGS.batch_size, jit_compile=FLAGS.xla),
            FLAGS.repeats)
    figures["exact_peak_memory_mb"] = peak.mb
    figures["batch_mean_s"] = median_time(lambda: temporal_fisher(
        model, data, FLAGS.samples, method="batch_mean", batch_size=16,
        jit_compile=FLAGS.xla), FLAGS.repeats)
    scale = FLAGS.samples / FLAGS.loop_samples
    for kind, compiled in (("eager", False), ("compiled", True)):
        loop = per_sample_loop(model, images[:FLAGS.loop_samples],
                               labels[:FLAGS.loop_samples], compiled)
        figures[f"loop_{kind}_s"] = median_time(loop, 1) * scale
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), MeanLogitCrossEntropy(),
                  jit_compile=True)
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(FLAGS.batch_size).cache()
    figures["epoch_s"] = median_time(lambda: model.fit(dataset, epochs=1, verbose=0),
                                     FLAGS.repeats)
    for kind in ("eager", "compiled"):
        figures[f"speedup_vs_{kind}_loop"] = figures[f"loop_{kind}_s"] / figures["exact_s"]
    return figures


def main(argv):
    results = {"machine": machine(FLAGS.xla), "width": FLAGS.width, "runs": []}
    print(f"{'T':>3} {'exact s':>8} {'batch_mean s':>13} {'eager loop s':>13} "
          f"{'compiled loop s':>16} {'epoch s':>8}")
    for steps in FLAGS.timesteps:
        figures = bench(steps)
        results["runs"].append(figures)
        print(f"{steps:>3} {figures['exact_s']:>8.2f} {figures['batch_mean_s']:>13.2f} "
              f"{figures['loop_eager_s']:>13.1f} {figures['loop_compiled_s']:>16.1f} "
              f"{figures['epoch_s']:>8.2f}", flush=True)
    if FLAGS.json:
        with open(FLAGS.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    app.run(main)
