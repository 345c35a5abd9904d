"""Timing helpers shared by the benchmark suite and scripts: medians, machine, peak memory."""
import os
import resource
import statistics
import sys
import time

import keras
import tensorflow as tf


def median_of(measure, repeats):
    """Median of the values `measure()` returns over `repeats` runs, after one warm-up run."""
    measure()
    return statistics.median(measure() for _ in range(repeats))


def median_time(fn, repeats):
    """Median wall time of `fn()` over `repeats` runs, after one untimed warm-up run."""

    def timed():
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return median_of(timed, repeats)


def machine(xla):
    """What the figures were measured on."""
    return {"cpus": os.cpu_count(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "xla": xla, "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
            "python": sys.version.split()[0]}


class PeakMemory:
    """Peak memory (MB) of the code run inside `with PeakMemory() as peak: ...`."""

    def __enter__(self):
        self.gpu = bool(tf.config.list_physical_devices("GPU"))
        if self.gpu:
            tf.config.experimental.reset_memory_stats("GPU:0")
        else:
            try:  # Linux: writing 5 resets the process's peak resident set (VmHWM)
                with open("/proc/self/clear_refs", "w") as handle:
                    handle.write("5")
            except OSError:
                pass  # elsewhere the process-lifetime peak is reported
        return self

    def __exit__(self, *exc):
        if self.gpu:
            self.mb = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
        else:
            self.mb = _resident_peak_mb()


def _resident_peak_mb():
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
