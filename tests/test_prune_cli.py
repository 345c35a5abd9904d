"""The iterative pruning command: rounds, sparsity, resume, outputs and bad input."""
import json
import shutil

import numpy as np
import pytest

from conftest import assert_fails_cleanly, assert_refused, prune_args, run_tool
from tic_tf import checkpoints
from tic_tf.iterative_pruning import PruneConfig, auto_timesteps, prune


@pytest.fixture(scope="module")
def pruned(trained_run, tmp_path_factory):
    npz, run_dir, _ = trained_run
    out = tmp_path_factory.mktemp("prune") / "out"
    result = run_tool("prune", *prune_args(npz, run_dir, out, "--retrain_timesteps=2,1,auto"))
    assert result.returncode == 0, result.stderr
    return npz, run_dir, out, result


def test_rounds_reach_the_compound_sparsity_and_write_every_output(pruned):
    _, _, out, _ = pruned
    summary = json.loads((out / "results.json").read_text())
    assert summary["timesteps"] == 2 and summary["train_epochs"] == 2
    assert len(summary["auto"]["fisher"]) == 2
    assert summary["auto"]["retrain_timesteps"] == auto_timesteps(summary["auto"]["fisher"], 0.5)
    tracks = {t["retrain_timesteps"]: t for t in summary["tracks"]}
    assert set(tracks) == {1, 2}  # auto picked 1 or 2, already listed: run once
    for steps, track in tracks.items():
        assert [r["round"] for r in track["rounds"]] == [1, 2]
        for r in track["rounds"]:
            assert r["sparsity"] == pytest.approx(1 - 0.5 ** r["round"], abs=2e-3)
            assert 0 <= r["accuracy_at_T"] <= 1 and r["retrain_s"] > 0
        assert track["formula_saving_percent"] == pytest.approx(
            100 * 1 * 2 * (2 - steps) / (2 * 2 + 1 * 2 * 2))
    assert tracks[2]["measured_saving_percent"] == 0.0
    assert (out / "results.md").read_text().startswith("Accuracy (%) at T=2")
    assert (out / "accuracy_vs_sparsity.png").read_bytes()[:4] == b"\x89PNG"


def test_round_checkpoints_hold_pruned_weights_that_evaluate_loads(pruned):
    _, _, out, _ = pruned
    model, config = checkpoints.load_model(str(out / "T1" / "round-02"))
    assert config["timesteps"] == 1
    convs = [w.numpy() for w in model.weights if w.path.endswith("kernel")]
    assert np.mean(np.concatenate([k.ravel() for k in convs]) == 0) == pytest.approx(0.75,
                                                                                   abs=2e-3)


def test_rerun_resumes_after_the_last_complete_round(pruned, tmp_path):
    npz, run_dir, out, _ = pruned
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    before = json.loads((copy / "T1" / "round-01" / "results.json").read_text())
    shutil.rmtree(copy / "T1" / "round-02")  # as if killed during round 2
    result = run_tool("prune", *prune_args(npz, run_dir, copy, "--retrain_timesteps=1"))
    assert result.returncode == 0, result.stderr
    assert "resuming after round 1" in result.stdout
    assert json.loads((copy / "T1" / "round-01" / "results.json").read_text()) == before
    summary = json.loads((copy / "results.json").read_text())
    assert [r["round"] for r in summary["tracks"][0]["rounds"]] == [1, 2]
    again = run_tool("prune", *prune_args(npz, run_dir, copy, "--retrain_timesteps=1"))
    assert "all 2 rounds already done" in again.stdout


@pytest.mark.parametrize("extra, message", [
    (["--fraction=1.5"], "--fraction must lie in (0, 1)"),
    (["--fraction=0"], "--fraction must lie in (0, 1)"),
    (["--retrain_timesteps=3"], "T_retrain=3 must lie in [1, 2]"),
    (["--retrain_timesteps=0"], "T_retrain=0 must lie in [1, 2]"),
    (["--retrain_timesteps=two"], "--retrain_timesteps takes integers or 'auto'"),
])
def test_bad_pruning_input_is_refused_before_any_output(trained_run, tmp_path, extra, message):
    npz, run_dir, _ = trained_run
    out = tmp_path / "out"
    assert_refused(PruneConfig, prune, prune_args(npz, run_dir, out, *extra), message, out)


def test_the_command_prints_a_missing_checkpoint_as_one_line(trained_run, tmp_path):
    npz, _, _ = trained_run
    out = tmp_path / "out"
    result = run_tool("prune", *prune_args(npz, tmp_path / "nothing", out))
    assert_fails_cleanly(result, "does not exist", out)
