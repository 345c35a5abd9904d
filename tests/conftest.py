import fcntl
import json
import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")



def pytest_configure(config):
    config.addinivalue_line("markers", "numerical: compares values that depend on the kernel "
                            "library (oneDNN or Eigen); the README's test command runs these "
                            "a second time with TF_ENABLE_ONEDNN_OPTS=0")


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tool(module, *args, cwd=None, env=None):
    """Run `python -m tic_tf.<module> args...` as a user would (with `env` added to the
    environment); returns CompletedProcess."""
    return subprocess.run([sys.executable, "-m", f"tic_tf.{module}", *args], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def assert_fails_cleanly(result, message, *absent_paths, status=2):
    """A tool refused bad input: exit `status` (None: any non-zero), `message` on stderr, no
    traceback, and none of `absent_paths` written."""
    assert result.returncode != 0 and status in (None, result.returncode), result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    for path in absent_paths:
        assert not os.path.exists(path), path


def assert_refused(config_class, function, args, message, *absent_paths):
    """A command line `args` parsed as its command parses it (`cli.parse`) and run by the
    library `function` in this process: refused with one UserError holding `message`, and none
    of `absent_paths` written. (Each command's CLI tests show how it prints such an error.)"""
    from tic_tf import cli
    from tic_tf.errors import UserError

    with pytest.raises(UserError) as error:
        function(cli.parse(config_class, args))
    assert message in str(error.value), str(error.value)
    for path in absent_paths:
        assert not os.path.exists(path), path


def write_npz(path, train=64, test=32, shape=(32, 32, 3), classes=10, seed=0, **overrides):
    """A small random image dataset in the .npz layout the tools accept."""
    rng = np.random.default_rng(seed)
    arrays = dict(x_train=rng.integers(0, 256, (train, *shape), dtype=np.uint8),
                  y_train=rng.integers(0, classes, train),
                  x_test=rng.integers(0, 256, (test, *shape), dtype=np.uint8),
                  y_test=rng.integers(0, classes, test))
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture
def tiny_npz(tmp_path):
    return write_npz(tmp_path / "tiny.npz")


def train_args(npz, model_dir, *extra):
    """A tiny but complete training run: ResNet19 at width 1/16, T=2, 2 epochs."""
    return ["--dataset=cifar10", f"--data_file={npz}", "--arch=resnet19", "--width=0.0625",
            "--timesteps=2", "--batch_size=16", "--epochs=2", "--learning_rate=0.05",
            "--keep_checkpoints=1", "--fisher_every=1", "--fisher_samples=8", "--verbose=0",
            f"--model_dir={model_dir}", *extra]


def prune_args(npz, run_dir, out, *extra):
    """Two tiny pruning rounds of the checkpoint in `run_dir`, written to `out`."""
    return [f"--checkpoint={run_dir}", f"--output_dir={out}", "--dataset=cifar10",
            f"--data_file={npz}", "--rounds=2", "--fraction=0.5", "--retrain_epochs=1",
            "--batch_size=16", "--eval_samples=16", "--fisher_samples=8", "--verbose=0",
            *extra]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """(npz, run directory, CompletedProcess) of one tiny training run, shared by tests and by
    the suite's worker processes (the first to ask trains it, under a lock, the others wait
    for it: they only read or copy it)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "trained_run"
    root.mkdir(exist_ok=True)
    npz, run_dir, record = root / "data.npz", root / "run", root / "result.json"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            write_npz(npz)
            result = run_tool("train", *train_args(npz, run_dir))
            assert result.returncode == 0, result.stderr
            record.write_text(json.dumps([result.args, result.stdout, result.stderr]))
    args, stdout, stderr = json.loads(record.read_text())
    return str(npz), run_dir, subprocess.CompletedProcess(args, 0, stdout, stderr)


def brightness_task(seed, count=32, shape=(28, 28, 1)):
    """Images in [0, 1] whose class (0 dark, 1 bright) is their mean brightness."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(count) % 2).astype(np.int32)
    images = rng.random((count, *shape)) * 0.3 + 0.1 + 0.4 * labels.reshape(-1, 1, 1, 1)
    return images.astype(np.float32), labels


def solved_model(seed, timesteps=3):
    """A tiny ResNet19 that solves `brightness_task(seed)` by construction, not by training,
    so that it works alike on every machine: random weights, batch-norm statistics (time-
    specific after the stem) calibrated on the task's images, so that spikes reach the
    classifier at every timestep, and a classifier fitted by least squares to the time-averaged pooled spikes
    (the mean logits are linear in them; 32 features and a bias for 32 images, so the fit
    interpolates its targets). Returns (model, images, labels)."""
    import keras

    from tic_tf.models import build_model, time_specific_twin

    keras.utils.set_random_seed(seed)
    images, labels = brightness_task(seed)
    model = build_model("resnet19", 2, timesteps, images.shape[1:], width=1 / 16)
    stem = keras.Model(model.input, model.get_layer("stem_conv").output)(images)
    mean, variance = keras.ops.moments(stem, axes=[0, 1, 2])
    model.get_layer("stem_bn").moving_mean.assign(mean)
    model.get_layer("stem_bn").moving_variance.assign(variance)
    model = time_specific_twin(model, images)
    head = model.get_layer("classifier_t")
    features = keras.Model(model.input, head.input)(images).numpy().mean(axis=1)
    design = np.concatenate([features, np.ones((len(features), 1))], axis=1)
    solution = np.linalg.lstsq(design, np.eye(2)[labels] * 2 - 1, rcond=None)[0]
    head.layer.set_weights([solution[:-1].astype(np.float32), solution[-1].astype(np.float32)])
    return model, images, labels
