"""Benchmark: PGD-10 time per image, and its cost in forward+backward passes.

    python scripts/bench_attacks.py --timesteps=4 --timesteps=10 --json=attack_bench.json

ResNet19 (width 1/4, 32x32x3, 10 classes, random inputs), batch --batch_size. Reports the time
per image of PGD with 10 iterations and of one input-gradient pass (forward + backward), and
their ratio: the number of forward+backward passes PGD-10 costs. Medians of --repeats runs
after a warm-up run (compilation excluded).
"""
import json

import numpy as np
import tensorflow as tf
from absl import app, flags

from benchutil import machine, median_time
from tic_tf.attacks import loss_gradient, pgd
from tic_tf.models import build_model

flags.DEFINE_multi_integer("timesteps", [4, 10], "Timesteps to benchmark.")
flags.DEFINE_float("width", 0.25, "ResNet19 width multiplier.")
flags.DEFINE_integer("batch_size", 32, "Images per attack call.")
flags.DEFINE_integer("repeats", 3, "Timed runs per figure (median reported).")
flags.DEFINE_boolean("xla", True, "Compile with XLA.")
flags.DEFINE_string("json", None, "Write the figures to this JSON file.")
FLAGS = flags.FLAGS


def bench(steps):
    rng = np.random.default_rng(0)
    images = tf.constant(rng.random((FLAGS.batch_size, 32, 32, 3), dtype=np.float32))
    labels = tf.constant(rng.integers(0, 10, FLAGS.batch_size).astype(np.int32))
    model = build_model("resnet19", 10, steps, (32, 32, 3), width=FLAGS.width)
    gradient = tf.function(loss_gradient(model, None), jit_compile=FLAGS.xla)
    grad_s = median_time(lambda: gradient(images, images, labels).numpy(), FLAGS.repeats)
    pgd_s = median_time(lambda: pgd(model, images, labels, iterations=10,
                                    jit_compile=FLAGS.xla).numpy(), FLAGS.repeats)
    return {"timesteps": steps, "pgd10_s_per_img": pgd_s / FLAGS.batch_size,
            "grad_s_per_img": grad_s / FLAGS.batch_size,
            "pgd10_in_fwd_bwd_passes": pgd_s / grad_s}


def main(argv):
    results = {"machine": machine(FLAGS.xla), "width": FLAGS.width,
               "batch_size": FLAGS.batch_size, "runs": []}
    print(f"{'T':>3} {'PGD-10 s/img':>13} {'fwd+bwd s/img':>14} {'passes':>7}")
    for steps in FLAGS.timesteps:
        figures = bench(steps)
        results["runs"].append(figures)
        print(f"{steps:>3} {figures['pgd10_s_per_img']:>13.4f} "
              f"{figures['grad_s_per_img']:>14.4f} {figures['pgd10_in_fwd_bwd_passes']:>7.1f}",
              flush=True)
    if FLAGS.json:
        with open(FLAGS.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    app.run(main)
