"""The robustness evaluation command, and training with the alpha loss."""
import json

import pytest

from conftest import assert_fails_cleanly, assert_refused, run_tool, train_args
from tic_tf.robustness import EvaluationConfig, evaluate


def test_table_one_report(trained_run, tmp_path):
    npz, run_dir, _ = trained_run
    out = tmp_path / "report"
    result = run_tool("evaluate", f"--checkpoints={run_dir}", f"--output_dir={out}",
                      f"--data_file={npz}", "--dataset=cifar10", "--eval_samples=16", "--batch_size=8",
                      "--evaluations=clean,gaussian,blur,fgsm,pgd,pgd_window",
                      "--pgd_iterations=2", "--window=1,1", "--attack_surrogates=1.0")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    row = report["models"][0]
    assert set(row["accuracy"]) == {"clean", "gaussian", "blur", "fgsm", "pgd", "pgd_window"}
    for name, value in row["accuracy"].items():
        assert 0 <= value <= 1 and value * 16 == round(value * 16)
        assert row["drop_from_clean"][name] == pytest.approx(value - row["accuracy"]["clean"])
    assert set(row["other_surrogates"]) == {"fgsm@1", "pgd@1", "pgd_window@1"}
    assert report["settings"]["eps"] == pytest.approx(8 / 255)
    table = (out / "report.md").read_text()
    assert "| model | clean | gaussian | blur | fgsm | pgd | pgd_window |" in table


@pytest.mark.parametrize("args, message", [
    (["--eps=-0.1"], "--eps must be in [0, 1]"),
    (["--evaluations=clean,cw"], "--evaluations takes clean, gaussian, blur, fgsm, pgd, "
                                 "fgsm_window, pgd_window, per_timestep, early_exit, energy; "
                                 "got cw."),
    (["--evaluations=pgd_window", "--window=2,2"], "lies outside [1, 2]"),
    (["--checkpoints=/nonexistent"], "does not exist"),
    (["--blur_size=32"], "blur size must lie in [1, 31] for 32x32 images"),
])
def test_bad_evaluation_input_is_refused_before_any_output(trained_run, tmp_path, args,
                                                          message):
    npz, run_dir, _ = trained_run
    out = tmp_path / "report"
    assert_refused(EvaluationConfig, evaluate, [f"--checkpoints={run_dir}",
                                                f"--output_dir={out}", f"--data_file={npz}",
                                                "--dataset=cifar10", *args], message, out)


def test_the_command_prints_bad_input_as_one_line(trained_run, tmp_path):
    npz, run_dir, _ = trained_run
    out = tmp_path / "report"
    result = run_tool("evaluate", f"--checkpoints={run_dir}", f"--output_dir={out}",
                      f"--data_file={npz}", "--dataset=cifar10", "--blur_size=32")
    assert_fails_cleanly(result, "error: blur size must lie in [1, 31]", out)


def test_alpha_loss_training_logs_every_timestep_loss(tmp_path, trained_run):
    npz, _, _ = trained_run
    run_dir = tmp_path / "alpha"
    args = train_args(npz, run_dir, "--loss=alpha", "--alpha=0.01", "--epochs=1",
                      "--fisher_every=0", "--noexport")
    result = run_tool("train", *args)
    assert result.returncode == 0, result.stderr
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert record["loss_t1"] > 0 and record["loss_t2"] > 0
    # The alpha loss is the mean over t of |L_t - alpha|; L_t here are far above alpha.
    assert record["loss"] == pytest.approx((record["loss_t1"] + record["loss_t2"]) / 2 - 0.01,
                                           rel=0.05)
