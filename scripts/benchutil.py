"""Shared helpers of the benchmark scripts: timing medians and machine description."""
import os
import statistics
import time

import tensorflow as tf


def median_time(fn, repeats):
    """Median wall time of `fn()` over `repeats` runs, after one untimed warm-up run."""
    fn()  # tracing and compilation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine(xla):
    return {"cpus": os.cpu_count(), "tensorflow": tf.__version__, "xla": xla,
            "gpus": len(tf.config.list_physical_devices("GPU"))}
