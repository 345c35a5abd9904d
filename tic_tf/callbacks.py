"""Keras callbacks for training runs: checkpoints, metrics.jsonl + TensorBoard, firing rates."""
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from tic_tf import checkpoints
from tic_tf.atomic import write_text
from tic_tf.models import lif_layers


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


def firing_rates(images):
    """A probe for MetricsLogger: the mean spike rate of every LIF layer on fixed `images`."""
    probe = {}

    def measure(model):
        if "model" not in probe:
            layers = lif_layers(model)
            probe["names"] = [layer.name for layer in layers]
            probe["model"] = keras.Model(model.inputs, [layer.output for layer in layers])
        rates = probe["model"](images, training=False)
        return {f"firing_rate/{name}": float(tf.reduce_mean(rate))
                for name, rate in zip(probe["names"], rates)}

    return measure


class MetricsLogger(keras.callbacks.Callback):
    """Writes every epoch's metrics to `metrics.jsonl` and to TensorBoard scalars.

    `probes` are functions `model -> {name: value}` measured at the end of each epoch.
    On a resumed run, records past the resumed epoch (from the killed attempt) are dropped.
    """

    def __init__(self, run_dir, start_epoch, probes=()):
        super().__init__()
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.writer = tf.summary.create_file_writer(os.path.join(run_dir, "tensorboard"))
        self.start_epoch = start_epoch
        self.probes = list(probes)

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
        for probe in self.probes:
            record.update(probe(self.model))
        record["epoch_time_s"] = time.perf_counter() - self.epoch_start
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        with self.writer.as_default(step=epoch + 1):
            for key, value in record.items():
                if key != "epoch":
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
