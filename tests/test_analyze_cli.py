"""The analysis command: Fisher curves, centroids, heat maps and window deficits."""
import json
import os

import numpy as np
import pytest

from conftest import assert_fails_cleanly, assert_refused, run_tool, write_npz
from tic_tf import checkpoints
from tic_tf.analysis import AnalysisConfig, analyze
from tic_tf.data import get_spec, load_arrays, to_unit_range
from tic_tf.fisher import information_centroid, temporal_fisher
from tic_tf.windows import window_accuracies


def test_fisher_and_window_analysis_of_every_checkpoint(trained_run, tmp_path):
    npz, run_dir, _ = trained_run
    out = tmp_path / "analysis"
    result = run_tool("analyze", f"--checkpoints={run_dir}", f"--output_dir={out}",
                      f"--data_file={npz}", "--dataset=cifar10", "--num_samples=8", "--batch_size=4",
                      "--analyses=fisher,windows", "--window=1", "--eval_samples=16")
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == ["centroid.png", "fisher.json", "fisher_curves.png",
                                       "layer_heatmap.png", "window_deficits.png",
                                       "windows.json"]
    fisher = json.loads((out / "fisher.json").read_text())
    assert [row["epoch"] for row in fisher["checkpoints"]] == [1, 2]
    arrays = load_arrays(get_spec("cifar10"), data_file=str(npz))
    for row in fisher["checkpoints"]:
        model = checkpoints.load_model(row["checkpoint"])[0]
        expected = temporal_fisher(model, (arrays.x_train, arrays.y_train), 8, batch_size=4)
        assert row["fisher"] == pytest.approx(expected.values.tolist(), rel=1e-4)
        assert row["centroid"] == pytest.approx(information_centroid(row["fisher"]))
        assert row["conv_routes"] == expected.conv_routes  # which kernels measured it, shown
        total = sum(sum(v) for v in row["per_layer"].values())
        assert total == pytest.approx(sum(row["fisher"]), rel=1e-4)  # blocks partition theta
    routes = ", ".join(f"{route} {count}" for route, count in row["conv_routes"].items())
    assert f"Per-sample convolution gradients by route: {routes} (TF_ENABLE_ONEDNN_OPTS=" \
        in result.stdout
    windows = json.loads((out / "windows.json").read_text())["checkpoints"][-1]
    expected = window_accuracies(model, to_unit_range(arrays.x_test[:16]), arrays.y_test[:16],
                                 1, 0.5, 0, 4)
    assert windows["starts"] == expected["starts"] == [1, 2]
    assert windows["accuracy"] == pytest.approx(expected["accuracy"])
    assert all((out / name).read_bytes()[:4] == b"\x89PNG" for name in os.listdir(out)
               if name.endswith(".png"))


def test_fisher_with_batch_statistics_is_the_library_measurement(trained_run, tmp_path):
    npz, run_dir, _ = trained_run
    out = tmp_path / "analysis"
    last = checkpoints.list_epochs(str(run_dir / "checkpoints"))[-1][1]
    result = run_tool("analyze", f"--checkpoints={last}", f"--output_dir={out}",
                      f"--data_file={npz}", "--dataset=cifar10", "--num_samples=8",
                      "--batch_size=8", "--bn_statistics=batch")
    assert result.returncode == 0, result.stderr
    row = json.loads((out / "fisher.json").read_text())["checkpoints"][0]
    arrays = load_arrays(get_spec("cifar10"), data_file=str(npz))
    expected = temporal_fisher(checkpoints.load_model(last)[0], (arrays.x_train, arrays.y_train),
                               8, batch_size=8, bn_statistics="batch")
    assert row["bn_statistics"] == "batch"
    assert row["fisher"] == pytest.approx(expected.values.tolist(), rel=1e-4)


@pytest.mark.parametrize("args, message", [
    (["--num_samples=1000"], "exceeds the 64 samples"),
    (["--timesteps=1"], "at least 2 timesteps"),
    (["--analyses=windows", "--window=5"], "lies outside [1, 2]"),
    (["--dataset=cifar100"], "pass the --dataset the model was trained on"),
    (["--checkpoints=/nonexistent"], "does not exist"),
])
def test_bad_analysis_input_is_refused_before_any_output(trained_run, tmp_path, args, message):
    npz, run_dir, _ = trained_run
    if any(a.startswith("--dataset=cifar100") for a in args):
        npz = write_npz(tmp_path / "c100.npz", classes=100)
    out = tmp_path / "analysis"
    assert_refused(AnalysisConfig, analyze, [f"--checkpoints={run_dir}", f"--output_dir={out}",
                                             f"--data_file={npz}", "--dataset=cifar10", *args],
                   message, out)


def test_the_command_prints_bad_input_as_one_line(trained_run, tmp_path):
    npz, run_dir, _ = trained_run
    out = tmp_path / "analysis"
    result = run_tool("analyze", f"--checkpoints={run_dir}", f"--output_dir={out}",
                      f"--data_file={npz}", "--dataset=cifar10", "--num_samples=1000")
    assert_fails_cleanly(result, "error: num_samples=1000 exceeds the 64 samples", out)


def test_consecutive_checkpoints_of_one_model_restore_into_one_object(trained_run):
    _, run_dir, _ = trained_run
    paths = [path for _, path in checkpoints.list_epochs(str(run_dir / "checkpoints"))]
    yielded = [(path, model, model.get_weights())
               for path, model in checkpoints.load_models(paths)]
    assert len(yielded) == 2 and yielded[0][1] is yielded[1][1]  # traced functions kept
    for path, _, weights in yielded:
        for ours, fresh in zip(weights, checkpoints.load_model(path)[0].get_weights()):
            np.testing.assert_array_equal(ours, fresh)
    at_other_t = [model for _, model in checkpoints.load_models(paths, timesteps=3)]
    assert at_other_t[0] is not at_other_t[1]  # copies at another T are made per checkpoint
