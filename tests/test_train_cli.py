"""The training and export commands, run as a user runs them."""
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, assert_fails_cleanly, assert_refused, run_tool, train_args, write_npz
from tic_tf import checkpoints, cli
from tic_tf.errors import UserError
from tic_tf.training import TrainConfig, train


def assert_same_final_weights(run_dir, other_dir):
    """The newest checkpoints of two runs hold bit-identical weights."""
    original, _ = checkpoints.load_model(str(run_dir))
    other, _ = checkpoints.load_model(str(other_dir))
    for a, b in zip(original.get_weights(), other.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_run_directory_holds_every_output(trained_run):
    _, run_dir, result = trained_run
    assert "Test accuracy" in result.stdout
    assert sorted(os.listdir(run_dir)) == ["checkpoints", "flags.json", "metrics.jsonl",
                                           "results.json", "saved_model", "tensorboard"]
    assert [e for e, _ in checkpoints.list_epochs(run_dir / "checkpoints")] == [1, 2]
    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate",
                "firing_rate/stem_lif", "firing_rate/stage3_block2_lif2"):
        assert all(np.isfinite(r[key]) for r in records), key
    assert records[1]["learning_rate"] < records[0]["learning_rate"]  # cosine schedule
    fisher = records[0]["fisher"]  # --fisher_every=1 monitoring
    assert len(fisher["fisher"]) == 2
    assert fisher["centroid"] == pytest.approx(  # Eq. 7 of the recorded I_t
        (fisher["fisher"][0] + 2 * fisher["fisher"][1]) / sum(fisher["fisher"]))
    assert records[0]["fisher/centroid"] == fisher["centroid"]
    assert "stage1_block1" in fisher["per_layer"]
    flags_json = json.loads(open(run_dir / "flags.json").read())
    assert flags_json["run_settings"]["timesteps"] == 2
    assert os.listdir(run_dir / "tensorboard")
    results = json.loads(open(run_dir / "results.json").read())
    assert 0 <= results["test_accuracy"] <= 1 and results["test_examples"] == 32


def test_saved_model_serves_probabilities_equal_to_the_keras_model(trained_run):
    _, run_dir, _ = trained_run
    model, _ = checkpoints.load_model(str(run_dir))
    served = tf.saved_model.load(str(run_dir / "saved_model")).signatures["serving_default"]
    x = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
    out = served(images=tf.constant(x))
    logits = model(x, training=False).numpy()
    np.testing.assert_allclose(out["logits_per_timestep"].numpy(), logits, atol=1e-5)
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)


def test_bfloat16_training_runs_and_its_checkpoint_evaluates_in_float32(tiny_npz, tmp_path):
    run_dir = tmp_path / "bf16"
    result = run_tool("train", *train_args(tiny_npz, run_dir, "--mixed_precision=bfloat16",
                                           "--epochs=1", "--fisher_every=0", "--export=false"))
    assert result.returncode == 0, result.stderr
    settings = json.loads(open(run_dir / "flags.json").read())["run_settings"]
    assert settings["mixed_precision"] == "bfloat16"
    model, _ = checkpoints.load_model(str(run_dir))  # weights are float32 whatever the policy
    assert all(w.dtype == "float32" for w in model.weights)
    assert np.isfinite(json.loads(open(run_dir / "results.json").read())["test_loss"])
    # evaluate runs the checkpoint in float32: its accuracy is this float32 model's own.
    out = tmp_path / "report"
    result = run_tool("evaluate", f"--checkpoints={run_dir}", f"--output_dir={out}",
                      f"--data_file={tiny_npz}", "--dataset=cifar10", "--evaluations=clean",
                      "--eval_samples=16")
    assert result.returncode == 0, result.stderr
    arrays = np.load(tiny_npz)
    logits = model(arrays["x_test"][:16] / np.float32(255), training=False)
    assert model.compute_dtype == "float32" and logits.dtype == "float32"
    expected = np.mean(logits.numpy().mean(axis=1).argmax(axis=1) == arrays["y_test"][:16])
    report = json.loads((out / "report.json").read_text())
    assert report["models"][0]["accuracy"]["clean"] == expected


# For resumed runs whose weights alone are compared: neither the Fisher monitor nor the export
# is a run setting, and neither may change the weights.
WEIGHTS_ONLY = ("--fisher_every=0", "--export=false")


def stopped_after_epoch_1(run_dir, copy):
    """A copy of the two-epoch `run_dir` as it was before its second epoch's outputs."""
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "checkpoints" / "epoch-0002")
    shutil.rmtree(copy / "saved_model")
    os.remove(copy / "results.json")
    return copy


def test_interrupted_run_resumes_to_the_same_weights(trained_run, tmp_path):
    npz, run_dir, _ = trained_run
    resumed_dir = stopped_after_epoch_1(run_dir, tmp_path / "resumed")
    # The state a run killed during epoch 2 leaves behind: one checkpoint, a partial one.
    (resumed_dir / "checkpoints" / "epoch-0002.partial-1").mkdir()
    result = run_tool("train", *train_args(npz, resumed_dir, *WEIGHTS_ONLY))
    assert result.returncode == 0, result.stderr
    assert "Resuming from" in result.stdout
    assert [e for e, _ in checkpoints.list_epochs(resumed_dir / "checkpoints")] == [1, 2]
    assert not any("partial" in n for n in os.listdir(resumed_dir / "checkpoints"))
    records = [json.loads(line) for line in open(resumed_dir / "metrics.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2]
    assert_same_final_weights(run_dir, resumed_dir)


def test_run_killed_with_sigkill_resumes_to_the_same_weights(trained_run, tmp_path):
    npz, run_dir, _ = trained_run
    killed_dir = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "tic_tf.train",
                                *train_args(npz, killed_dir)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (killed_dir / "checkpoints" / "epoch-0001").exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # during epoch 2
    process.wait()
    assert not (killed_dir / "checkpoints" / "epoch-0002").exists()
    assert (killed_dir / ".lock").exists()  # SIGKILL leaves no time to release it
    result = run_tool("train", *train_args(npz, killed_dir, *WEIGHTS_ONLY))
    assert result.returncode == 0, result.stderr
    assert (f"Taking over the lock of {killed_dir}: process {process.pid} on "
            in result.stdout and "is no longer running." in result.stdout)
    assert "Resuming from" in result.stdout
    assert_same_final_weights(run_dir, killed_dir)


def test_sigterm_saves_mid_epoch_and_resumes_to_the_same_weights(tmp_path):
    npz = write_npz(tmp_path / "data.npz", train=256)  # 16 steps per epoch
    args = lambda run_dir: train_args(npz, run_dir, "--fisher_every=0", "--export=false")  # noqa: E731
    assert run_tool("train", *args(tmp_path / "straight")).returncode == 0
    stopped_dir = tmp_path / "stopped"
    process = subprocess.Popen([sys.executable, "-m", "tic_tf.train", *args(stopped_dir)],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 300
    while not (stopped_dir / "checkpoints" / "epoch-0001").exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)  # during epoch 2
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 2
    assert "Preempted (SIGTERM) at epoch 2, step" in stderr
    assert (stopped_dir / "checkpoints" / "preempted").is_dir()
    result = run_tool("train", *args(stopped_dir))
    assert result.returncode == 0, result.stderr
    assert "preempted (epoch 2, after step" in result.stdout
    assert not (stopped_dir / "checkpoints" / "preempted").exists()
    records = [json.loads(line) for line in open(stopped_dir / "metrics.jsonl")]
    assert [r["epoch"] for r in records] == [1, 2]
    assert_same_final_weights(tmp_path / "straight", stopped_dir)


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(trained_run, tmp_path):
    npz, run_dir, _ = trained_run
    resumed_dir = tmp_path / "corrupt"
    shutil.copytree(run_dir, resumed_dir)
    newest = resumed_dir / "checkpoints" / "epoch-0002"
    data_file = next(newest.glob("state.data-*"))
    data_file.write_bytes(b"\0" * 16)  # truncated, as by a full disk
    result = run_tool("train", *train_args(npz, resumed_dir, *WEIGHTS_ONLY))
    assert result.returncode == 0, result.stderr
    assert "skipping unreadable checkpoint" in result.stderr and "epoch-0002" in result.stderr
    assert "Resuming from" in result.stdout and "epoch-0001" in result.stdout
    assert_same_final_weights(run_dir, resumed_dir)  # epoch 2 trained again


def fingerprint(stdout):
    return re.search(r"Weights fingerprint ([0-9a-f]{16})", stdout).group(1)


def file_size_limit(limit):
    """A preexec_fn: writes past `limit` bytes per file fail with EFBIG, as on a full disk
    (SIGXFSZ ignored so that the write returns the error instead of killing the process)."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_while_checkpointing_loses_nothing_and_the_rerun_resumes(trained_run,
                                                                            tmp_path):
    npz, run_dir, _ = trained_run
    # Its second checkpoint (0.86 MB) will not fit in 0.5 MB.
    full_dir = stopped_after_epoch_1(run_dir, tmp_path / "full")
    metrics = (full_dir / "metrics.jsonl").read_text().splitlines(keepends=True)[0]
    (full_dir / "metrics.jsonl").write_text(metrics)
    first = {p.name: p.read_bytes() for p in (full_dir / "checkpoints" / "epoch-0001").iterdir()}
    result = subprocess.run([sys.executable, "-m", "tic_tf.train", *train_args(npz, full_dir)],
                            cwd=REPO, capture_output=True, text=True, timeout=600,
                            preexec_fn=file_size_limit(500_000))
    assert_fails_cleanly(result, f"error: Could not write {full_dir}/checkpoints/epoch-0002: "
                         "File too large (it needs about ")
    needed = re.search(r"it needs about (\d+) kB; .* free on that disk\)\. What was written "
                       r"before is intact: make room and run the same command again to "
                       r"resume\.\n$", result.stderr)
    assert 500 < int(needed.group(1)) < 1000  # the model and optimizer: 0.86 MB on disk
    assert os.listdir(full_dir / "checkpoints") == ["epoch-0001"]  # no partial left behind
    assert {p.name: p.read_bytes()
            for p in (full_dir / "checkpoints" / "epoch-0001").iterdir()} == first
    assert (full_dir / "metrics.jsonl").read_text() == metrics
    assert not (full_dir / "results.json").exists()
    result = run_tool("train", *train_args(npz, full_dir, *WEIGHTS_ONLY))
    assert result.returncode == 0, result.stderr
    assert "Resuming from" in result.stdout and "epoch-0001" in result.stdout
    assert fingerprint(result.stdout) == fingerprint(trained_run[2].stdout)  # uninterrupted


def test_diverging_loss_stops_with_epoch_and_step_and_keeps_no_bad_checkpoint(tiny_npz,
                                                                             tmp_path):
    run_dir = tmp_path / "nan"
    assert_refused(TrainConfig, train, train_args(tiny_npz, run_dir, "--learning_rate=1e30",
                                                  "--fisher_every=0"),
                   "The training loss became nan at epoch 1, step")
    assert checkpoints.list_epochs(run_dir / "checkpoints") == []


def test_run_directory_with_other_settings_is_refused(trained_run):
    npz, run_dir, _ = trained_run
    before = sorted(os.listdir(run_dir / "checkpoints"))
    for change, message in (("--timesteps=3", "timesteps: 2 -> 3"),
                            ("--batch_norm=shared", "batch_norm: 'per_timestep' -> 'shared'")):
        with pytest.raises(UserError) as error:
            train(cli.parse(TrainConfig, train_args(npz, run_dir, change)))
        assert message in str(error.value) and "new --model_dir" in str(error.value)
    assert sorted(os.listdir(run_dir / "checkpoints")) == before


def test_export_at_other_timesteps_round_trips(trained_run, tmp_path):
    _, run_dir, _ = trained_run
    output = tmp_path / "export_t3"
    checkpoint = run_dir / "checkpoints" / "epoch-0001"
    result = run_tool("export", f"--checkpoint={checkpoint}", f"--output={output}",
                      "--timesteps=3")
    assert result.returncode == 0, result.stderr
    served = tf.saved_model.load(str(output)).signatures["serving_default"]
    model, config = checkpoints.load_model(str(checkpoint), timesteps=3)
    x = np.random.default_rng(1).random((2, 32, 32, 3), dtype=np.float32)
    out = served(images=tf.constant(x))
    assert out["logits_per_timestep"].shape == (2, 3, 10)
    np.testing.assert_allclose(out["logits_per_timestep"].numpy(), model(x).numpy(), atol=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--checkpoint=/nonexistent/run"], "does not exist"),
    (["--checkpoint={tmp}"], "No checkpoint found"),
])
def test_export_refuses_unreadable_checkpoints(tmp_path, args, message):
    output = tmp_path / "out"
    result = run_tool("export", *[a.format(tmp=tmp_path) for a in args], f"--output={output}")
    assert_fails_cleanly(result, message, output)


def test_export_refuses_checkpoint_of_another_architecture(trained_run, tmp_path):
    _, run_dir, _ = trained_run
    fake = tmp_path / "epoch-0001"
    shutil.copytree(run_dir / "checkpoints" / "epoch-0001", fake)
    config = json.loads((fake / "model.json").read_text())
    (fake / "model.json").write_text(json.dumps({**config, "arch": "alexnet"}))
    result = run_tool("export", f"--checkpoint={fake}", f"--output={tmp_path / 'out'}")
    assert_fails_cleanly(result, "Cannot restore checkpoint", tmp_path / "out")


def bad_data_files(tmp_path):
    """A good tiny .npz and three malformed ones beside it; returns the good one's path."""
    write_npz(tmp_path / "keys.npz", x_test=None)
    write_npz(tmp_path / "labels.npz", y_train=np.arange(64))
    write_npz(tmp_path / "shape.npz", x_train=np.zeros((64, 32, 32), np.uint8))
    return write_npz(tmp_path / "good.npz")


@pytest.mark.parametrize("extra, message", [
    (["--dataset=mnist"], "dataset"),
    (["--arch=resnet50"], "arch"),
    (["--timesteps=0"], "timesteps"),
    (["--width=0"], "--width must be positive"),
    (["--tau=0.5"], "--tau must be > 0.5"),
    (["--data_file={tmp}/absent.npz"], "does not exist"),
    (["--data_file={tmp}/keys.npz"], "lacks the arrays"),
    (["--data_file={tmp}/labels.npz"], "needs labels in [0, 9]"),
    (["--data_file={tmp}/shape.npz"], "has shape"),
    (["--batch_size=1000"], "exceeds the 64 training examples"),
    (["--loss=alpha", "--alpha=-1"], "alpha"),
    (["--batch_norm=tdbn"], "--batch_norm"),
    (["--train_examples=65"], "Asked for 65 train examples, but the data set has 64"),
])
def test_bad_training_input_is_refused_before_any_output(tmp_path, extra, message):
    npz = bad_data_files(tmp_path)
    run_dir = tmp_path / "run"
    assert_refused(TrainConfig, train, train_args(npz, run_dir)
                   + [a.format(tmp=tmp_path) for a in extra], message, run_dir)


@pytest.mark.parametrize("extra, message, status", [
    (["--arch=resnet50"], "arch", 1),  # absl's own check of a flag's choices
    (["--data_file={tmp}/keys.npz"], "keys.npz lacks the arrays", 2),  # the library's UserError
])
def test_the_command_prints_bad_input_as_one_line(tmp_path, extra, message, status):
    npz = bad_data_files(tmp_path)
    run_dir = tmp_path / "run"
    result = run_tool("train", *train_args(npz, run_dir),
                      *[a.format(tmp=tmp_path) for a in extra])
    assert_fails_cleanly(result, message, run_dir, status=status)


def test_main_job_on_embedded_digits_end_to_end(tmp_path):
    """The README's main command (flags/quick_cpu.cfg), shortened: no data file, no download,
    no warnings; its Fisher record and SavedModel agree with the checkpoint it leaves."""
    from tic_tf import data
    from tic_tf.fisher import temporal_fisher

    run_dir = tmp_path / "quick"
    result = run_tool("train", "--flagfile=flags/quick_cpu.cfg", "--epochs=1", "--width=0.0625",
                      "--timesteps=2", "--train_examples=128", "--fisher_samples=16",
                      f"--model_dir={run_dir}", "--verbose=2")
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    assert f"tensorboard --logdir {run_dir / 'tensorboard'}" in result.stdout
    assert "Fisher information I_1..I_2" in result.stdout
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    model, _ = checkpoints.load_model(str(run_dir))
    arrays = data.load_arrays(data.get_spec("digits"))
    again = temporal_fisher(model, (data.to_unit_range(arrays.x_train[:16]),
                                    arrays.y_train[:16]), 16)
    np.testing.assert_allclose(record["fisher"]["fisher"], again.values, rtol=1e-4)
    served = tf.saved_model.load(str(run_dir / "saved_model")).signatures["serving_default"]
    test_images = data.to_unit_range(arrays.x_test[:8])
    np.testing.assert_allclose(served(images=tf.constant(test_images))["logits_per_timestep"],
                               model(test_images, training=False), atol=1e-5)
