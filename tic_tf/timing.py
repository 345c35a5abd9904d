"""Timing helpers shared by the benchmark suite and scripts: medians, machine, peak memory,
per-op profiles."""
import concurrent.futures
import glob
import multiprocessing
import os
import resource
import statistics
import sys
import time

import keras
import tensorflow as tf

from tic_tf import kernels


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


def in_fresh_process(fn, *args):
    """`fn(*args)` run in a new Python process, its result returned: spawned, not forked
    (TensorFlow's runtime cannot be forked once started), so nothing of this process's
    allocator, caches or memory peak carries into the measurement."""
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
        return pool.submit(fn, *args).result()


def machine(xla):
    """What the figures were measured on."""
    return {"cpus": os.cpu_count(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "xla": xla, "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
            "python": sys.version.split()[0], **kernels.report()}


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


def profile_ops(step, steps, logdir):
    """Runs `step()` `steps` times under TensorFlow's profiler, the trace written to `logdir`.

    Returns the wall seconds per step and a list of (op name, op type, milliseconds), one per
    op TensorFlow's executor ran: its kernels, and each call of an XLA-compiled function as an
    op of type "XLA" (named "compiled function": the trace does not say which). Ops run on
    two threads at once, so they may sum to more than the wall time. `step` should wait for
    its result (e.g. call `.numpy()`).
    """
    tf.profiler.experimental.start(logdir)
    start = time.perf_counter()
    try:
        for _ in range(steps):
            step()
    finally:
        wall = (time.perf_counter() - start) / steps
        tf.profiler.experimental.stop()
    return wall, list(_op_events(logdir))


def _op_events(logdir):
    try:  # the profiler's trace format (XSpace), which TensorBoard's profile plugin reads
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    except ImportError as error:
        raise RuntimeError(f"This TensorFlow has no XSpace reader ({error}); open the trace in "
                           f"{logdir} with TensorBoard's profile plugin instead.") from error
    space = xplane_pb2.XSpace()
    trace = max(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True),
                key=os.path.getmtime)
    with open(trace, "rb") as handle:
        space.ParseFromString(handle.read())
    for plane in space.planes:
        if plane.name.startswith("/host:CPU"):
            for line in plane.lines:
                if not line.name.startswith("tf_Compute"):  # the executor's threads
                    continue
                for event in line.events:
                    name = plane.event_metadata[event.metadata_id].name
                    if name == "CpuExecutable::ExecuteAsyncOnStream":
                        yield "compiled function", "XLA", event.duration_ps / 1e9
                    elif ":" in name and "::" not in name:  # "scope/op:OpType"
                        op, kind = name.rsplit(":", 1)
                        yield op, kind, event.duration_ps / 1e9
