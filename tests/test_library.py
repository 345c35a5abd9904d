"""The library used from Python with plain arguments: training, analysis, evaluation and
pruning in-process, each checked against an independent computation, and the same defaults as
the commands."""
import json
import os
import random
import re
import signal

import keras
import numpy as np
import pytest

from conftest import run_tool
from tic_tf import checkpoints
from tic_tf.analysis import AnalysisConfig, analyze
from tic_tf.data import DataConfig, to_unit_range
from tic_tf.errors import UserError
from tic_tf.fisher import temporal_fisher
from tic_tf.iterative_pruning import PruneConfig, prune
from tic_tf.pruning import prunable_layers
from tic_tf.robustness import EvaluationConfig, evaluate
from tic_tf.training import TrainConfig, train

# A two-epoch AlexNet on the embedded 8x8 digits: seconds on a CPU.
SETTINGS = dict(arch="alexnet", width=0.125, timesteps=2, optimizer="adam",
                learning_rate=0.003, batch_size=64, epochs=2, export=False, verbose=0)
TEST_DIGITS = DataConfig().load()


def accuracy_by_hand(path):
    """Test accuracy of a checkpoint: argmax of the mean over time of its logits."""
    model, _ = checkpoints.load_model(path)
    logits = model.predict(to_unit_range(TEST_DIGITS.x_test), batch_size=120, verbose=0)
    return float(np.mean(logits.mean(axis=1).argmax(-1) == TEST_DIGITS.y_test))


def open_files_under(directory):
    """The files under `directory` this process holds open."""
    paths = (os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd"))
    return [path for path in paths if path.startswith(os.path.realpath(directory))]


def test_a_training_run_leaves_the_process_as_it_found_it(tmp_path):
    """Its seed, its precision, its SIGTERM handler and its TensorBoard writers stay inside
    the call, whether training ends or fails."""
    def handler(signum, frame):  # the caller's own
        pass

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        random.seed(5)
        np.random.seed(5)
        python_state, numpy_state = random.getstate(), np.random.get_state()
        for name, changes in (("bfloat16", dict(mixed_precision="bfloat16", fisher_every=1,
                                                fisher_samples=8, epochs=1)),
                              ("diverging", dict(optimizer="sgd", learning_rate=1e30))):
            config = TrainConfig(model_dir=str(tmp_path / name), **{**SETTINGS, **changes})
            if name == "diverging":
                with pytest.raises(UserError, match="The training loss became nan"):
                    train(config)
            else:
                train(config)
                assert os.listdir(tmp_path / name / "tensorboard")  # it did write there
            assert random.getstate() == python_state, name
            for ours, theirs in zip(np.random.get_state(), numpy_state):
                np.testing.assert_array_equal(ours, theirs, err_msg=name)
            assert keras.config.dtype_policy().name == "float32", name
            assert signal.getsignal(signal.SIGTERM) is handler, name
            assert open_files_under(tmp_path / name) == [], name
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("library") / "run"
    return run_dir, train(TrainConfig(model_dir=str(run_dir), **SETTINGS))


def test_training_from_python_matches_the_command_bit_for_bit(digits_run, tmp_path):
    run_dir, results = digits_run
    assert results == json.loads((run_dir / "results.json").read_text())
    newest = checkpoints.resolve(str(run_dir))
    assert results["test_accuracy"] == pytest.approx(accuracy_by_hand(newest), abs=1e-6)
    flags = [f"--{name}={value}" for name, value in SETTINGS.items()]
    command = run_tool("train", *flags, f"--model_dir={tmp_path / 'cli'}")
    assert command.returncode == 0, command.stderr
    printed = re.search(r"Weights fingerprint (\w+)", command.stdout).group(1)
    assert printed == results["weights_fingerprint"]


def test_analysis_from_python_equals_the_estimator_called_directly(digits_run, tmp_path):
    run_dir, _ = digits_run
    rows = analyze(AnalysisConfig(checkpoints=(str(run_dir),), output_dir=str(tmp_path),
                                  num_samples=64))
    assert [row["epoch"] for row in rows["fisher"]] == [1, 2]
    model, _ = checkpoints.load_model(checkpoints.resolve(str(run_dir)))
    direct = temporal_fisher(model, (TEST_DIGITS.x_train, TEST_DIGITS.y_train), 64,
                             per_layer=True)
    np.testing.assert_allclose(rows["fisher"][-1]["fisher"], direct.values, rtol=1e-5)
    written = json.loads((tmp_path / "fisher.json").read_text())
    assert written["checkpoints"][-1]["fisher"] == rows["fisher"][-1]["fisher"]


def test_evaluation_from_python_reports_the_clean_accuracy_by_hand(digits_run, tmp_path):
    run_dir, _ = digits_run
    rows = evaluate(EvaluationConfig(checkpoints=(str(run_dir),), output_dir=str(tmp_path),
                                     evaluations=("clean", "fgsm"), xla=False))
    expected = accuracy_by_hand(checkpoints.resolve(str(run_dir)))
    assert rows[0]["accuracy"]["clean"] == pytest.approx(expected, abs=1e-6)
    assert rows[0]["drop_from_clean"]["fgsm"] == pytest.approx(
        rows[0]["accuracy"]["fgsm"] - expected, abs=1e-6)


def test_pruning_from_python_halves_the_weights_and_keeps_them_at_zero(digits_run, tmp_path):
    run_dir, _ = digits_run
    summary = prune(PruneConfig(checkpoint=str(run_dir), output_dir=str(tmp_path),
                                rounds=1, retrain_epochs=1, retrain_timesteps=(2,),
                                verbose=0))
    assert summary["dense_accuracy"] == pytest.approx(
        accuracy_by_hand(checkpoints.resolve(str(run_dir))), abs=1e-6)
    round_dir = str(tmp_path / "T2" / "round-01")
    model, _ = checkpoints.load_model(round_dir)
    assert summary["tracks"][0]["rounds"][0]["accuracy_at_T"] == pytest.approx(
        accuracy_by_hand(round_dir), abs=1e-6)
    kernels = [layer.kernel.numpy() for layer in prunable_layers(model)]
    zeros = sum(int(np.sum(k == 0)) for k in kernels)
    assert zeros / sum(k.size for k in kernels) == pytest.approx(
        summary["tracks"][0]["rounds"][0]["sparsity"], abs=1e-6)
    assert summary["tracks"][0]["rounds"][0]["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_pruning_retrains_on_the_training_runs_subset(digits_run, tmp_path):
    run_dir, _ = digits_run
    prune(PruneConfig(checkpoint=str(run_dir), output_dir=str(tmp_path), rounds=1,
                      retrain_epochs=2, retrain_timesteps=(2,), batch_size=32,
                      train_examples=96, augment=False, verbose=0))
    round_dir = str(tmp_path / "T2" / "round-01")
    model, _ = checkpoints.load_model(round_dir)
    optimizer = keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(0.01, 6),
                                     momentum=0.9, weight_decay=5e-4)  # as retraining made it
    checkpoints.restore(round_dir, model, optimizer)
    assert int(optimizer.iterations) == 2 * 96 // 32  # 2 epochs of 3 steps, not of 1,437 / 32


@pytest.mark.parametrize("config, arguments, message", [
    (TrainConfig, dict(width=0), "--width must be positive"),
    (TrainConfig, dict(batch_norm="pooled"), "--batch_norm takes per_timestep"),
    (DataConfig, dict(dataset="mnist"), "--dataset takes cifar10"),
    (PruneConfig, dict(checkpoint="x", output_dir="y", fraction=1.0), "--fraction must lie"),
    (EvaluationConfig, dict(checkpoints=("x",), output_dir="y", evaluations=("clean", "jpeg")),
     "--evaluations takes clean"),
    (AnalysisConfig, dict(checkpoints=(), output_dir="y"), "checkpoints and output_dir"),
])
def test_bad_settings_from_python_raise_one_clear_error(config, arguments, message):
    with pytest.raises(UserError, match=re.escape(message)):
        config(**arguments)
