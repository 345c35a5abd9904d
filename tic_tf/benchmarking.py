"""Benchmark suite: training, inference, Fisher curve, PGD-10, peak memory and the ceiling.

    from tic_tf.benchmarking import BenchmarkConfig, benchmark
    results = benchmark(BenchmarkConfig(timesteps=(4, 10)))

For each T of `timesteps`, on random 32x32x3 inputs with 10 classes (medians of `repeats`
timed runs after an untimed warm-up, so compilation is excluded):
  train_img_s      training throughput: forward + BPTT backward + SGD update, images/s
  infer_img_s      inference throughput (per-timestep logits), images/s, of the network as
                   exported for serving: batch-norm folded into the layers before it
                   (`tic_tf.models.fold_batch_norm`)
  ceiling_img_s    the same network with every LIF replaced by ReLU, trained on batches of
                   T x batch_size images in one pass: the dense compute a spiking step cannot
                   beat on this hardware, in the spiking step's images/s (T x batch_size
                   dense images count as batch_size spiking ones)
  fisher_curve_s   exact per-sample I_1..I_T over `fisher_samples` samples
  pgd10_s_per_img  PGD with 10 iterations, per image; pgd10_passes is its cost in
                   forward+backward (input-gradient) passes
  peak_memory_mb   peak memory of the training measurement (GPU: TensorFlow's allocator
                   peak; CPU: the process's peak resident set, reset before it on Linux)
Each precision and T is measured in a fresh process, as each of the peer's is: no row
inherits an earlier row's allocator, caches or memory peak.
With `peer` (a directory holding the PyTorch peer's ref_bench.py and ensure-torchenv), the peer
is timed right after tic_tf at the same width, T, batch, Fisher samples and precision, in the
step mode of the same batch-norm semantics (single-step: statistics per timestep; multi-step:
shared over time), and the table gains its rows and tic_tf's ratios to it.
"""
import dataclasses
import json
from concurrent.futures.process import BrokenProcessPool
import os
import subprocess
import time

import keras
import numpy as np
import tensorflow as tf

from tic_tf.atomic import write_json
from tic_tf.compiled import function
from tic_tf.errors import UserError
from tic_tf.attacks import loss_gradient, pgd
from tic_tf.fisher import temporal_fisher
from tic_tf.losses import MeanLogitCrossEntropy
from tic_tf.models import (ARCHITECTURES, BATCH_NORM_MODES, PRECISIONS, build_model,
                           fold_batch_norm, relu_twin, set_precision)
from tic_tf.options import (check_choices, check_paths, check_positive, integers, option, require,
                            xla)
from tic_tf.timing import PeakMemory, in_fresh_process, machine, median_of, median_time

FIGURES = ("train", "infer", "ceiling", "fisher", "pgd")


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    """What to time, on which network, at which precision."""
    arch: str = option("resnet19", "Network architecture.", choices=sorted(ARCHITECTURES))
    width: float = option(0.25, "Channel width multiplier.")
    timesteps: tuple = option((4, 10), "Values of T to benchmark.",
                              parse=integers("timesteps", minimum=1))
    batch_norm: str = option("per_timestep", "Batch-norm mode of the benchmarked model "
                             "(per_timestep: the reference code's semantics; shared: "
                             "statistics pooled over time, as SpikingJelly's multi-step mode).",
                             choices=list(BATCH_NORM_MODES))
    batch_size: int = option(32, "Batch size of every figure.")
    train_steps: int = option(8, "Timed training steps per run (after one more that starts "
                              "the clock).")
    fisher_samples: int = option(256, "Samples of the Fisher curve.")
    repeats: int = option(5, "Timed runs per figure (the median is reported).")
    xla: bool = xla(False, "Training, inference and attacks (the Fisher estimator always "
                    "runs without: slower with it on CPU).")
    recompute: bool = option(False, "Recompute LIF membranes and spikes in the backward pass "
                             "(gradient checkpointing; see tic_tf.neurons).")
    mixed_precision: tuple = option(("none",), "Precisions to benchmark, each a separate run "
                                    "of every figure: none (float32), bfloat16 (CPUs with "
                                    "AVX512-BF16/AMX) or float16.", choices=sorted(PRECISIONS))
    skip: tuple = option((), "Figures to leave out: any of train, infer, ceiling, fisher, pgd.",
                         choices=FIGURES)
    json: str = option(None, "Also write the figures to this JSON file.", kind=str,
                       writes="file")
    peer: str = option(None, "Directory of the PyTorch peer (ref_bench.py, ensure-torchenv), "
                       "time it too, at the same settings.", kind=str)

    def __post_init__(self):
        check_choices(self)
        check_paths(self)
        check_positive(self, "batch_size", "train_steps", "fisher_samples", "repeats")
        require(self.width > 0, f"--width must be positive, got {self.width}.")
        require(self.timesteps and all(t >= 1 for t in self.timesteps),
                "--timesteps takes positive integers, e.g. 4,10.")
        require(not self.peer or "float16" not in self.mixed_precision,
                "The peer runs in float32 or bfloat16; leave float16 out of --mixed_precision "
                "or drop --peer.")
        require(not self.peer or self.arch == "resnet19",
                "The peer is a ResNet19; pass --arch=resnet19 with --peer.")
        if self.peer:
            for name in PEER_FILES:
                require(os.path.isfile(os.path.join(self.peer, name)),
                        f"--peer={self.peer} holds no {name}; point it at the directory "
                        "of the peer's ref_bench.py and ensure-torchenv.")


class StepTimer(keras.callbacks.Callback):
    """Seconds per training step between the first and the last step of a `fit` call: the
    steady state of an epoch, without fit's own set-up and tear-down (measured at about
    0.7 s per call here, which would swamp an 8-step run)."""

    def on_train_begin(self, logs=None):
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        float(logs["loss"])  # wait for the step to finish
        self.ends.append(time.perf_counter())

    def seconds_per_step(self):
        return (self.ends[-1] - self.ends[0]) / (len(self.ends) - 1)


def train_seconds_per_step(config, model, images, labels):
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), MeanLogitCrossEntropy(),
                  jit_compile=config.xla)
    data = tf.data.Dataset.from_tensors((images, labels)).repeat()
    timer = StepTimer()

    def seconds_per_step():
        model.fit(data, epochs=1, steps_per_epoch=config.train_steps + 1, verbose=0,
                  callbacks=[timer], shuffle=False)  # one batch repeated: nothing to shuffle
        return timer.seconds_per_step()

    return median_of(seconds_per_step, config.repeats)


def bench(config, timesteps):
    """The figures of `config` at `timesteps`. A figure that fails (a kernel this machine
    lacks, memory) is reported under "failed" and the others are still measured."""
    batch = config.batch_size
    rng = np.random.default_rng(0)
    images = rng.random((max(batch, config.fisher_samples), 32, 32, 3), dtype=np.float32)
    labels = rng.integers(0, 10, len(images)).astype(np.int32)
    x, y = tf.constant(images[:batch]), tf.constant(labels[:batch])
    keras.utils.set_random_seed(0)
    model = build_model(config.arch, 10, timesteps, (32, 32, 3), width=config.width,
                        batch_norm=config.batch_norm, recompute=config.recompute)

    def train():
        with PeakMemory() as peak:
            throughput = batch / train_seconds_per_step(config, model, x, y)
        return {"train_img_s": throughput, "peak_memory_mb": peak.mb}

    def infer():
        served = fold_batch_norm(model)
        run = function(lambda images: served(images, training=False), jit_compile=config.xla)
        return {"infer_img_s": batch / median_time(lambda: run(x).numpy(), config.repeats)}

    def ceiling():
        dense_x = tf.constant(np.resize(images, (timesteps * batch, 32, 32, 3)))
        dense_y = tf.constant(np.resize(labels, timesteps * batch))
        return {"ceiling_img_s": batch / train_seconds_per_step(config, relu_twin(model),
                                                                dense_x, dense_y)}

    def fisher():
        data = (images[:config.fisher_samples], labels[:config.fisher_samples])
        return {"fisher_curve_s": median_time(
            lambda: temporal_fisher(model, data, config.fisher_samples, batch_size=batch),
            config.repeats)}

    def attack():
        attacked = median_time(lambda: pgd(model, x, y, iterations=10,
                                           jit_compile=config.xla).numpy(), config.repeats)
        gradient = function(loss_gradient(model, None), jit_compile=config.xla)
        one_pass = median_time(lambda: gradient(x, x, y).numpy(), config.repeats)
        return {"pgd10_s_per_img": attacked / batch, "pgd10_passes": attacked / one_pass}

    figures = {"timesteps": timesteps}
    for name, measure in (("train", train), ("infer", infer), ("ceiling", ceiling),
                          ("fisher", fisher), ("pgd", attack)):
        if name in config.skip:
            continue
        try:
            figures.update(measure())
        except (tf.errors.OpError, MemoryError) as error:
            first_line = (getattr(error, "message", None) or str(error)).strip().splitlines()
            figures.setdefault("failed", {})[name] = (f"{type(error).__name__}: "
                                                      f"{first_line[0] if first_line else ''}")
    return figures


def bench_at_precision(config, precision, timesteps):
    """`bench` with the models built at `precision` (run in a process of its own)."""
    set_precision(precision)
    return bench(config, timesteps)


PEER_FILES = ("ref_bench.py", "ensure-torchenv")


def peer_python(peer):
    """The peer's Python, its environment made first if needed (once per machine)."""
    print("Preparing the peer's environment (the first time, this installs PyTorch) ...",
          flush=True)
    made = subprocess.run([os.path.join(peer, "ensure-torchenv")], capture_output=True,
                          text=True)
    if made.returncode != 0 or not made.stdout.strip():
        raise UserError(f"Could not make the peer's environment ({made.stderr.strip()[-300:]}"
                        "); it needs the package registry once, to install PyTorch.")
    return made.stdout.strip().splitlines()[-1]


def peer_step_mode(batch_norm):
    """The peer's step mode with the training semantics of `batch_norm`: multi-step mode
    pools batch-norm statistics over time, single-step keeps them per timestep."""
    return "m" if batch_norm == "shared" else "s"


def bench_peer(config, python, timesteps, precision):
    """The peer's figures at the settings of `config`, as tic_tf's figure names."""
    command = [python, os.path.join(config.peer, "ref_bench.py"), "--width", str(config.width),
               "--timesteps", str(timesteps), "--batch", str(config.batch_size),
               "--fisher_n", "0" if "fisher" in config.skip else str(config.fisher_samples),
               "--reps", str(config.repeats), "--step_mode", peer_step_mode(config.batch_norm),
               "--amp", "bf16" if precision == "bfloat16" else "none"]
    ran = subprocess.run(command, capture_output=True, text=True)
    if ran.returncode != 0:
        raise UserError(f"The peer failed: {' '.join(command)}\n{ran.stderr.strip()[-500:]}")
    measured = json.loads(ran.stdout.strip().splitlines()[-1])
    figures = {"timesteps": timesteps, "system": f"peer, {measured['step_mode']}-step",
               "train_img_s": measured["train_img_s"], "infer_img_s": measured["infer_img_s"]}
    if "fisher_curve_s" in measured:
        figures["fisher_curve_s"] = measured["fisher_curve_s"]
    return figures


def add_ratios(ours, peer):
    """tic_tf's speed-ups over the peer: throughput ratios, and the peer's Fisher time (its
    batch approximation) over ours (the exact per-sample curve)."""
    for key in ("train_img_s", "infer_img_s"):
        if key in ours:  # not with --skip=train / infer (the peer always measures them)
            ours[f"{key}_vs_peer"] = ours[key] / peer[key]
    if "fisher_curve_s" in ours and "fisher_curve_s" in peer:
        ours["fisher_curve_vs_peer"] = peer["fisher_curve_s"] / ours["fisher_curve_s"]


COLUMNS = (("train_img_s", "train img/s", "{:.1f}"), ("infer_img_s", "infer img/s", "{:.1f}"),
           ("ceiling_img_s", "ceiling img/s", "{:.1f}"), ("fisher_curve_s", "Fisher s", "{:.1f}"),
           ("pgd10_s_per_img", "PGD-10 s/img", "{:.3f}"), ("pgd10_passes", "PGD passes", "{:.1f}"),
           ("peak_memory_mb", "peak MB", "{:.0f}"),
           ("train_img_s_vs_peer", "train x peer", "{:.2f}"),
           ("infer_img_s_vs_peer", "infer x peer", "{:.2f}"),
           ("fisher_curve_vs_peer", "Fisher x peer", "{:.2f}"))


def table(runs):
    shown = [c for c in COLUMNS if any(c[0] in run for run in runs)]
    lines = ["| precision | T | system | " + " | ".join(title for _, title, _ in shown) + " |",
             "|---|---|---|" + "---|" * len(shown)]
    for run in runs:
        cells = [fmt.format(run[key]) if key in run else "-" for key, _, fmt in shown]
        lines.append(f"| {run['precision']} | {run['timesteps']} | {run['system']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def benchmark(config):
    """Every figure of `config` for each of its precisions and T (and the peer's, with
    `peer`); returns them with the machine's details."""
    python = peer_python(config.peer) if config.peer else None
    results = {"machine": machine(config.xla), "recompute": config.recompute,
               "batch_norm": config.batch_norm, "arch": config.arch, "width": config.width,
               "batch_size": config.batch_size, "fisher_samples": config.fisher_samples,
               "repeats": config.repeats, "runs": []}
    for precision in config.mixed_precision:
        for timesteps in config.timesteps:
            print(f"Benchmarking T={timesteps}, precision {precision} ...", flush=True)
            try:
                ours = in_fresh_process(bench_at_precision, config, precision, timesteps)
            except BrokenProcessPool:  # killed: out of memory, or a crash in a kernel
                ours = {"timesteps": timesteps,
                        "failed": {"all": "the measuring process died (out of memory?)"}}
            runs = [{"precision": precision, "system": "tic_tf", **ours}]
            if python:
                print(f"Benchmarking the peer at T={timesteps}, precision {precision} ...",
                      flush=True)
                try:
                    peer = bench_peer(config, python, timesteps, precision)
                except UserError as error:
                    peer = {"timesteps": timesteps, "system": "peer",
                            "failed": {"peer": str(error)}}
                else:
                    add_ratios(runs[0], peer)
                runs.append({"precision": precision, **peer})
            results["runs"] += runs
            print(table(runs), flush=True)
            if config.json:  # after every run, so a long benchmark keeps what it measured
                write_json(config.json, results)
    print(json.dumps(results["machine"]))
    print(table(results["runs"]))
    failures = [f"T={run['timesteps']} {run['precision']} {figure}: {why}"
                for run in results["runs"] for figure, why in run.get("failed", {}).items()]
    if failures:
        kept = f"; the figures measured are in {config.json}" if config.json else ""
        raise UserError("some figures could not be measured: " + "; ".join(failures) + kept)
    return results
