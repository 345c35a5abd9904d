"""Early-exit inference and accuracy per timestep, against plain loops over inputs and t."""
import json
import math

import numpy as np
import pytest

from conftest import assert_refused, run_tool
from tic_tf import early_exit, robustness
from tic_tf.errors import UserError
from tic_tf.robustness import EvaluationConfig, evaluate


def softmax(values):
    exp = np.exp(values - values.max())
    return exp / exp.sum()


def meets(probabilities, policy, threshold):
    top = sorted(probabilities)
    if policy == "confidence":
        return top[-1] >= threshold
    if policy == "entropy":
        return -sum(p * math.log(p) for p in probabilities if p > 0) <= threshold
    return top[-1] - top[-2] >= threshold


def exits_by_hand(logits, policy, threshold):
    """(exit timestep, prediction) per input, one input and one t at a time."""
    result = []
    for sample in logits:
        for t in range(1, len(sample) + 1):
            probabilities = softmax(sample[:t].mean(axis=0))
            if meets(probabilities, policy, threshold) or t == len(sample):
                result.append((t, int(np.argmax(probabilities))))
                break
    return result


@pytest.mark.numerical
@pytest.mark.parametrize("policy, thresholds", [("confidence", (0.3, 0.6, 0.9)),
                                                ("entropy", (0.2, 0.8, 1.3)),
                                                ("margin", (0.0, 0.3, 0.7))])
def test_sweep_equals_a_loop_over_inputs_and_timesteps(policy, thresholds):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(60, 5, 4)) * 2
    labels = rng.integers(0, 4, 60)
    curve = early_exit.sweep(logits, labels, policy, thresholds)
    for point, threshold in zip(curve.points, thresholds):
        by_hand = exits_by_hand(logits, policy, threshold)
        steps = np.array([t for t, _ in by_hand])
        np.testing.assert_array_equal(early_exit.exit_timesteps(logits, policy, threshold),
                                      steps)
        assert point.accuracy == np.mean([p == y for (_, p), y in zip(by_hand, labels)])
        assert point.mean_timesteps == steps.mean()
        assert point.histogram == [int(np.sum(steps == t)) for t in range(1, 6)]
    final = logits.mean(axis=1).argmax(axis=1)
    assert curve.full.accuracy == np.mean(final == labels) and curve.full.mean_timesteps == 5
    # Thresholds ordered from easy to hard to meet use more timesteps, never fewer.
    means = [p.mean_timesteps for p in curve.points]
    assert means == sorted(means, reverse=policy == "entropy")


def test_oracle_exits_at_the_first_correct_timestep_of_inputs_correct_at_t():
    # Input 0: correct from t=2 on; 1: correct at t=1, wrong at T; 2: correct from t=1.
    logits = np.array([[[0, 1], [3, 0], [3, 0]],
                       [[5, 0], [0, 9], [0, 9]],
                       [[4, 0], [4, 0], [4, 0]]], dtype=np.float64)
    labels = np.array([0, 0, 0])
    np.testing.assert_array_equal(early_exit.oracle_timesteps(logits, labels), [2, 3, 1])
    oracle = early_exit.sweep(logits, labels, "confidence", (0.9,)).oracle
    assert oracle.accuracy == pytest.approx(2 / 3) and oracle.mean_timesteps == 2
    assert oracle.histogram == [1, 1, 1]


@pytest.mark.parametrize("policy, threshold, message", [
    ("patience", 0.5, "Unknown early-exit policy 'patience'; choose one of confidence, "
                      "entropy, margin."),
    ("confidence", 1.5, r"outside the confidence policy's range \[0, 1\]"),
    ("confidence", 0.0, r"confidence > 0"),
    ("margin", -0.1, r"outside the margin policy's range \[0, 1\]"),
    ("entropy", 1.5, r"outside the entropy policy's range \[0, 1.38629\] \(for 4 classes"),
])
def test_bad_policies_and_thresholds_are_refused(policy, threshold, message):
    with pytest.raises(UserError, match=message):
        early_exit.exit_timesteps(np.zeros((2, 3, 4)), policy, threshold)


def test_evaluate_reports_timestep_accuracy_and_early_exit_of_the_model(trained_run,
                                                                        tmp_path):
    """The report's numbers against the checkpoint's own logits and Fisher centroid."""
    from tic_tf import checkpoints
    from tic_tf.data import to_unit_range
    from tic_tf.fisher import temporal_fisher

    npz, run_dir, _ = trained_run
    out = tmp_path / "report"
    result = run_tool("evaluate", f"--checkpoints={run_dir}", f"--output_dir={out}",
                      f"--data_file={npz}", "--dataset=cifar10", "--eval_samples=24",
                      "--batch_size=8", "--evaluations=per_timestep,early_exit",
                      "--exit_policy=margin", "--exit_thresholds=0.0001,0.01,1",
                      "--exit_fisher_samples=8")
    assert result.returncode == 0, result.stderr
    row = json.loads((out / "report.json").read_text())["models"][0]
    arrays = np.load(npz)
    images, labels = to_unit_range(arrays["x_test"][:24]), arrays["y_test"][:24]
    model, _ = checkpoints.load_model(str(run_dir))
    logits = model(images, training=False).numpy().astype(np.float64)
    upto = [np.mean(logits[:, :t].mean(axis=1).argmax(axis=1) == labels) for t in (1, 2)]
    alone = [np.mean(logits[:, t].argmax(axis=1) == labels) for t in (0, 1)]
    np.testing.assert_allclose(row["per_timestep"]["accuracy_upto"], upto)
    np.testing.assert_allclose(row["per_timestep"]["accuracy_at"], alone)
    curve = row["early_exit"]
    assert curve["policy"] == "margin"
    assert [p["threshold"] for p in curve["points"]] == [0.0001, 0.01, 1]
    for point in curve["points"]:
        steps = [t for t, _ in exits_by_hand(logits, "margin", point["threshold"])]
        assert point["mean_timesteps"] == pytest.approx(np.mean(steps))
    assert curve["points"][-1]["accuracy"] == pytest.approx(upto[-1])  # 1 is never met
    fisher = temporal_fisher(model, (to_unit_range(arrays["x_train"][:8]),
                                     arrays["y_train"][:8]), 8)
    assert curve["fisher_centroid"] == pytest.approx(fisher.centroid, rel=1e-5)
    for name in ("per_timestep.png", "early_exit.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert "| oracle |" in report and "| timesteps 1..t |" in report


def test_evaluate_refuses_a_threshold_outside_the_policy_before_any_work(trained_run,
                                                                         tmp_path):
    npz, run_dir, _ = trained_run
    out = tmp_path / "report"
    assert_refused(EvaluationConfig, evaluate, [
        f"--checkpoints={run_dir}", f"--output_dir={out}", f"--data_file={npz}",
        "--dataset=cifar10", "--evaluations=early_exit", "--exit_policy=entropy",
        "--exit_thresholds=0.5,3"], "threshold of 3 is outside the entropy policy's range", out)


@pytest.mark.parametrize("paths, labels", [
    (["/r/runs/a/checkpoints/epoch-0015", "/r/runs/bn/checkpoints/epoch-0015"], ["a", "bn"]),
    (["runs/a/epoch-0003", "runs/a/epoch-0009"], ["epoch-0003", "epoch-0009"]),
    (["runs/a", "runs/a/b"], ["runs/a", "runs/a/b"]),  # nothing left of one: as given
    (["runs/a/checkpoints"], ["runs/a/checkpoints"]),
])
def test_plot_labels_drop_the_path_components_all_checkpoints_share(paths, labels):
    assert robustness.short_labels(paths) == labels
