"""Keras callbacks for training runs: checkpoints, metrics.jsonl + TensorBoard, firing rates."""
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from tic_tf import checkpoints, plots
from tic_tf.atomic import append_line, write_text
from tic_tf.diagnostics import TimestepProbe
from tic_tf.energy import operation_counts
from tic_tf.errors import UserError
from tic_tf.fisher import temporal_fisher
from tic_tf.models import BN_STATISTICS
from tic_tf.summaries import SummaryCallback


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves model + optimizer after every epoch; keeps the last two and `keep_epochs`."""

    def __init__(self, directory, model_config, keep_epochs=()):
        super().__init__()
        self.directory = directory
        self.model_config = model_config
        self.keep_epochs = set(keep_epochs)

    def on_epoch_end(self, epoch, logs=None):
        checkpoints.save(self.directory, epoch + 1, self.model, self.model_config,
                         self.model.optimizer)
        checkpoints.remove_stale(self.directory, self.keep_epochs)


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first step whose loss is NaN or infinite, naming epoch and step.

    It raises before the epoch ends, so no checkpoint of the diverged weights is written and
    the last good one stays the newest.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not np.isfinite(loss):
            raise UserError(
                f"The training loss became {loss} at epoch {self.epoch + 1}, step {batch + 1}; "
                "stopped, keeping the last complete checkpoint. Lower --learning_rate, or "
                "resume with other settings in a new --model_dir.")


class TimestepMonitor(SummaryCallback):
    """Adds, on fixed test `images`, every LIF layer's mean spike rate (`firing_rate/<layer>`)
    and the accuracy per timestep (`timestep_accuracy/upto_t`: logits accumulated over 1..t;
    `.../at_t`: timestep t alone), each with batch-norm in inference mode, to the logs; keeps a
    `diagnostics` record of both batch-norm modes per epoch in `records` (for
    `MetricsLogger`: Keras logs hold scalars); draws layer x timestep firing heat maps of both
    into TensorBoard."""

    def __init__(self, images, labels, log_dir):
        super().__init__(log_dir)
        self.data = (images, labels)
        self.probe = None
        self.records = {}  # epoch -> {"diagnostics": ...}

    def on_epoch_end(self, epoch, logs=None):
        if self.probe is None:
            self.probe = TimestepProbe(self.model)
        results = {mode: self.probe(*self.data, bn_statistics=mode) for mode in BN_STATISTICS}
        moving = results["moving"]
        if logs is not None:
            logs.update({f"firing_rate/{name}": float(rates.mean())
                         for name, rates in moving.firing.items()})
            for t, (upto, at) in enumerate(zip(moving.accuracy_upto, moving.accuracy_at), 1):
                logs[f"timestep_accuracy/upto_{t}"] = float(upto)
                logs[f"timestep_accuracy/at_{t}"] = float(at)
        self.records[epoch + 1] = {
            "diagnostics": {mode: result.to_json() for mode, result in results.items()}}
        with self.writer.as_default(step=epoch + 1):
            for mode, result in results.items():
                png = plots.firing_heatmap(result.firing, f"spike rate, batch-norm {mode} "
                                           f"statistics, epoch {epoch + 1}")
                tf.summary.image(f"firing/layer_x_timestep_{mode}_statistics",
                                 tf.image.decode_png(png)[None])
        self.writer.flush()


class EnergyMonitor(keras.callbacks.Callback):
    """Every `every` epochs, counts the operations the network (batch-norm folded, as served)
    performs on fixed test `images` and adds to the logs, per image: `energy/pj` under
    `table`, `energy/vs_ann` (that energy over the equivalent ANN's), `energy/accumulates`
    and `energy/multiply_accumulates` (`tic_tf.energy`)."""

    def __init__(self, images, every, table="45nm"):
        super().__init__()
        self.images = images
        self.every = every
        self.table = table
        self.records = {}  # the logs carry all it measures

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every or logs is None:
            return
        counts = operation_counts(self.model, self.images)
        per_image = counts.per_image()
        logs["energy/pj"] = counts.energy_per_image(self.table)
        logs["energy/vs_ann"] = logs["energy/pj"] / counts.ann_energy_per_image(self.table)
        logs["energy/accumulates"] = per_image["accumulate"]
        logs["energy/multiply_accumulates"] = per_image["multiply_accumulate"]


class FisherMonitor(SummaryCallback):
    """Every `every` epochs, measures temporal Fisher information on a fixed training subset.

    Adds `fisher/I_t` scalars, `fisher/centroid` and `fisher/time_s` to the logs, keeps a
    `fisher` record (I_t, IC, per-block values) per epoch in `records` (for `MetricsLogger`),
    and draws two heat maps into TensorBoard: timestep x epoch (each epoch's I_t normalised to
    sum 1) and block x timestep (each block normalised to its peak).
    verbose: also print one line per measurement (I_t, centroid, seconds taken).
    """

    def __init__(self, images, labels, every, log_dir, batch_size=32, verbose=False):
        super().__init__(log_dir)
        self.data = (images, labels)
        self.every = every
        self.batch_size = batch_size
        self.verbose = verbose
        self.history = {}
        self.records = {}  # epoch -> {"fisher": ...}

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        started = time.perf_counter()
        result = temporal_fisher(self.model, self.data, len(self.data[0]), per_layer=True,
                                 batch_size=self.batch_size)
        seconds = time.perf_counter() - started
        if logs is not None:
            logs["fisher/time_s"] = seconds
            logs.update({f"fisher/I_{t}": float(v) for t, v in enumerate(result.values, 1)})
            logs["fisher/centroid"] = result.centroid
        self.records[epoch + 1] = {"fisher": result.to_json()}
        if self.verbose:
            values = ", ".join(f"{v:.3g}" for v in result.values)
            print(f"Fisher information I_1..I_{len(result.values)} = [{values}], centroid "
                  f"{result.centroid:.2f} ({seconds:.0f} s, {len(self.data[0])} images)",
                  flush=True)
        total = result.values.sum()  # zero for a network that carries no information yet
        self.history[epoch + 1] = result.values / total if total > 0 else result.values
        epochs = sorted(self.history)
        timesteps = range(1, len(result.values) + 1)
        over_epochs = plots.heatmap(np.stack([self.history[e] for e in epochs], axis=1),
                                    list(timesteps), epochs, title="I_t / sum I_t",
                                    xlabel="epoch", ylabel="timestep")
        blocks = np.stack(list(result.per_layer.values()))
        by_block = plots.heatmap(blocks / np.maximum(blocks.max(axis=1, keepdims=True), 1e-30),
                                 list(result.per_layer), list(timesteps), xlabel="timestep",
                                 title=f"Fisher per block, epoch {epoch + 1}")
        with self.writer.as_default(step=epoch + 1):
            for name, png in (("timestep_x_epoch", over_epochs), ("block_x_timestep", by_block)):
                tf.summary.image(f"fisher/{name}", tf.image.decode_png(png)[None])
        self.writer.flush()


class MetricsLogger(SummaryCallback):
    """Writes every epoch's logs, and the structured records of `sources` (monitors with a
    `records` dict keyed by epoch), to `metrics.jsonl`, and the scalars to TensorBoard.

    Put it after the callbacks that add to the logs. On a resumed run, records past the
    resumed epoch (from the killed attempt) are dropped.
    """

    def __init__(self, run_dir, start_epoch, sources=()):
        super().__init__(os.path.join(run_dir, "tensorboard"))
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.start_epoch = start_epoch
        self.sources = list(sources)

    def on_train_begin(self, logs=None):
        kept = [record for record in read_metrics(self.path)
                if record["epoch"] <= self.start_epoch]
        write_text(self.path, "".join(json.dumps(record) + "\n" for record in kept))

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1,
                  "learning_rate": float(np.asarray(self.model.optimizer.learning_rate))}
        record.update({key: float(value) for key, value in (logs or {}).items()})
        for source in self.sources:
            record.update(source.records.pop(epoch + 1, {}))
        record["epoch_time_s"] = time.perf_counter() - self.epoch_start
        self.start_epoch = epoch + 1  # a later fit() in this run keeps this record
        append_line(self.path, json.dumps(record))
        with self.writer.as_default(step=epoch + 1):
            for key, value in record.items():
                if key != "epoch" and isinstance(value, float):
                    tf.summary.scalar(_tensorboard_name(key), value)
        self.writer.flush()


def _tensorboard_name(key):
    if "/" in key:
        return key
    if key.startswith("val_"):
        return f"test/{key[4:]}"
    return f"train/{key}"


def read_metrics(path):
    """The records of a metrics.jsonl file (none if it does not exist)."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as handle:
        for line in handle:
            try:
                records.append(json.loads(line))
            except ValueError:  # a line cut short when a run was killed mid-write
                continue
    return records
