"""Training under tf.distribute strategies: several workers or replicas train like one device."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import (REPO, assert_fails_cleanly, assert_refused, prune_args, run_tool,
                      train_args, write_npz)
from tic_tf import checkpoints
from tic_tf.training import TrainConfig, train


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(module, *args, count=2):
    """Run `python -m tic_tf.<module> args` as `count` workers of one localhost cluster, as
    on `count` hosts; returns their CompletedProcess results once all have exited 0."""
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(count)]}
    workers = []
    for index in range(count):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append(subprocess.Popen(
            [sys.executable, "-m", f"tic_tf.{module}", *args], cwd=REPO, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "TF_CONFIG": tf_config}))
    results = []
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=600)
        assert worker.returncode == 0, stderr
        results.append(subprocess.CompletedProcess(worker.args, 0, stdout, stderr))
    return results


def fingerprint_line(stdout):
    return next(line for line in stdout.splitlines() if line.startswith("Weights fingerprint"))


def test_two_workers_train_like_one_worker_with_the_same_global_batch(tmp_path):
    # 25 test images: the last evaluation batch (9) splits unevenly over the two workers.
    npz = write_npz(tmp_path / "data.npz", test=25)
    # Four steps: over many more, spike thresholds amplify last-bit differences (the
    # synchronised batch-norm sums x and x^2 across workers) as between any two runs whose
    # float operations are ordered differently; Keras' own fit under MirroredStrategy does too.
    common = ["--epochs=1", "--fisher_every=0", "--export=false"]
    workers = run_workers("train", *train_args(npz, tmp_path / "multi",
                                               "--strategy=multi_worker", *common))
    assert "Training on 2 replicas, 8 examples each per step." in workers[0].stdout
    # Both workers hold bit-identical weights; only the chief wrote into the run directory.
    assert fingerprint_line(workers[0].stdout) == fingerprint_line(workers[1].stdout)
    assert sorted(os.listdir(tmp_path / "multi")) == [
        "checkpoints", "flags.json", "metrics.jsonl", "results.json", "tensorboard"]

    single = run_tool("train", *train_args(npz, tmp_path / "single", *common))
    assert single.returncode == 0, single.stderr
    multi_model, _ = checkpoints.load_model(str(tmp_path / "multi"))
    single_model, _ = checkpoints.load_model(str(tmp_path / "single"))
    for a, b in zip(multi_model.get_weights(), single_model.get_weights()):
        np.testing.assert_allclose(a, b, atol=2e-5)
    # The logged metrics are those of the global batch and of the whole test set.
    multi_results = json.loads((tmp_path / "multi" / "results.json").read_text())
    single_results = json.loads((tmp_path / "single" / "results.json").read_text())
    assert multi_results["test_accuracy"] == single_results["test_accuracy"]
    assert multi_results["test_loss"] == pytest.approx(single_results["test_loss"], abs=1e-4)
    multi_log = [json.loads(line) for line in open(tmp_path / "multi" / "metrics.jsonl")]
    single_log = [json.loads(line) for line in open(tmp_path / "single" / "metrics.jsonl")]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert [r[key] for r in multi_log] == pytest.approx([r[key] for r in single_log],
                                                             abs=1e-4)


def test_pruning_retrains_on_two_workers_like_on_one(trained_run, tmp_path):
    npz, run_dir, _ = trained_run
    args = ["--rounds=1", "--retrain_timesteps=2"]
    run_workers("prune", *prune_args(npz, run_dir, tmp_path / "multi", "--strategy=multi_worker",
                                     *args))
    single = run_tool("prune", *prune_args(npz, run_dir, tmp_path / "single", *args))
    assert single.returncode == 0, single.stderr
    assert sorted(os.listdir(tmp_path / "multi")) == sorted(os.listdir(tmp_path / "single"))
    multi_model, _ = checkpoints.load_model(str(tmp_path / "multi" / "T2" / "round-01"))
    single_model, _ = checkpoints.load_model(str(tmp_path / "single" / "T2" / "round-01"))
    # Pruning picks the same weights; retraining a trained network, last-bit differences
    # in the synchronised batch statistics flip a few spikes within the first steps (a
    # one-worker cluster, same loop, reproduces the one-device run bit for bit).
    for a, b in zip(multi_model.get_weights(), single_model.get_weights()):
        np.testing.assert_array_equal(a == 0, b == 0)
        np.testing.assert_allclose(a, b, atol=1e-2)


TWO_CPU_REPLICAS = """
import sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from tic_tf import distribute
from tic_tf.data import get_spec, train_dataset
from tic_tf.losses import MeanLogitCrossEntropy, accuracy_metric
from tic_tf.models import build_model
import tic_tf.models.blocks as blocks

# Both runs normalise with the all-reduced batch-norm passes, so that they differ only in how
# the work is split: one replica alone would use the fused kernel, whose rounding an epoch of
# spikes amplifies (1e-2 apart here; the fused path is tested against Keras per timestep in
# test_batch_norm.py).
blocks.synchronized_batch_norm = lambda: True

def train(strategy):
    keras.utils.set_random_seed(0)
    data = np.load(sys.argv[1])
    batches, steps = train_dataset(data["x_train"], data["y_train"], get_spec("cifar10"), 16,
                                   seed=0, start_epoch=0, epochs=1)
    with strategy.scope():
        model = build_model("resnet19", 10, 2, (32, 32, 3), width=0.0625)
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), MeanLogitCrossEntropy(),
                      metrics=[accuracy_metric()])
        distribute.fit(model, strategy, batches, 1, 0, steps, callbacks=[], verbose=0)
    return model.get_weights()

mirrored = train(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
one_device = train(tf.distribute.get_strategy())
print(max(float(np.max(np.abs(a - b))) for a, b in zip(mirrored, one_device)))
"""


def test_mirrored_strategy_on_two_replicas_trains_like_one_device(tmp_path):
    npz = write_npz(tmp_path / "data.npz")
    local = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}  # one host, no cluster
    result = subprocess.run([sys.executable, "-c", TWO_CPU_REPLICAS, npz], cwd=REPO, env=local,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split()[-1]) < 2e-5


ALPHA_LOSS_ON_TWO_REPLICAS = """
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from tic_tf.losses import AlphaLoss, per_timestep_losses
from tic_tf.models import build_model

rng = np.random.default_rng(0)
images = rng.random((16, 8, 8, 1), dtype=np.float32)
labels = rng.integers(0, 10, 16).astype(np.int32)

def model_in(strategy):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        return build_model("alexnet", 10, 2, (8, 8, 1), width=1 / 16)

# alpha between the two replicas' shard losses L_1, on the far side from the global L_1: the
# shards' own |L_1 - alpha| pull in opposite directions, the global one in one.
losses = per_timestep_losses(model_in(tf.distribute.get_strategy())(images, training=True),
                             labels).numpy()[:, 0]
shards = losses[:8].mean(), losses[8:].mean()
alpha = float(losses.mean() + 0.5 * (max(shards) - losses.mean()))

def one_step(strategy):
    model = model_in(strategy)
    with strategy.scope():
        model.compile(keras.optimizers.SGD(1.0), AlphaLoss(alpha))
    model.fit(tf.data.Dataset.from_tensor_slices((images, labels)).batch(16), epochs=1,
              verbose=0)
    return model.get_weights()

mirrored = one_step(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
one_device = one_step(tf.distribute.get_strategy())
print(max(float(np.max(np.abs(a - b))) for a, b in zip(mirrored, one_device)))
"""


def test_alpha_loss_on_two_replicas_takes_the_global_batch_losses():
    local = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    result = subprocess.run([sys.executable, "-c", ALPHA_LOSS_ON_TWO_REPLICAS], cwd=REPO,
                            env=local, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split()[-1]) < 2e-5


@pytest.mark.parametrize("extra, tf_config, message", [
    (["--strategy=multi_worker"], None, "needs the TF_CONFIG environment variable"),
    (["--strategy=multi_worker"], '{"cluster": ', "TF_CONFIG is not valid"),
    (["--strategy=multi_worker"], '{"cluster": {"worker": ["localhost:1"]}, '
     '"task": {"type": "worker", "index": 3}}', "task worker:3 is not in its cluster"),
    (["--strategy=gpus"], None, "--strategy"),
])
def test_bad_strategy_settings_are_refused_before_any_output(tiny_npz, tmp_path, monkeypatch,
                                                             extra, tf_config, message):
    run_dir = tmp_path / "run"
    monkeypatch.delenv("TF_CONFIG", raising=False)
    if tf_config:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    assert_refused(TrainConfig, train, train_args(tiny_npz, run_dir, *extra), message, run_dir)


def test_the_command_prints_a_missing_tpu_as_one_line(tiny_npz, tmp_path):
    run_dir = tmp_path / "run"
    result = run_tool("train", *train_args(tiny_npz, run_dir, "--strategy=tpu"))
    assert_fails_cleanly(result, "error: --strategy=tpu found no TPU", run_dir)
