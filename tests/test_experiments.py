"""The paper's experiments at smoke scale: every figure and JSON written, the JSON's numbers
those the library computes for the same checkpoints, finished runs skipped."""
import json
import os

import numpy as np
import pytest

from tic_tf import checkpoints
from tic_tf.callbacks import read_metrics
from tic_tf.data import DataConfig, to_unit_range
from tic_tf.errors import UserError
from tic_tf.experiments import SCALES, run_experiment
from tic_tf.fisher import information_centroid, temporal_fisher
from tic_tf.windows import window_accuracies

SMOKE = SCALES["smoke"]
DIGITS = DataConfig().load()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("reproduce"))


def checkpoint(root, run, epoch):
    return os.path.join(root, "smoke", "runs", run, "checkpoints", f"epoch-{epoch:04d}")


def read(root, experiment):
    path = os.path.join(root, "smoke", experiment)
    with open(path + ".png", "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(path + ".json") as handle:
        return json.load(handle)


def test_fig1_records_the_monitor_and_the_estimator_of_each_checkpoint(root):
    run_experiment("fig1", "smoke", root)
    record = read(root, "fig1")
    assert record["sizes"]["base"]["epochs"] == SMOKE.base["epochs"]
    metrics = read_metrics(os.path.join(root, "smoke", "runs", "base", "metrics.jsonl"))
    assert record["centroid_by_epoch"]["centroid"] == [r["fisher/centroid"] for r in metrics]
    for epoch in SMOKE.measured_epochs:
        model, _ = checkpoints.load_model(checkpoint(root, "base", epoch))
        fisher = temporal_fisher(model, (DIGITS.x_train, DIGITS.y_train), SMOKE.fisher_samples)
        measured = record["fisher_at_epochs"][str(epoch)]
        np.testing.assert_allclose(measured["fisher"], fisher.values, rtol=1e-5)
        assert measured["centroid"] == pytest.approx(information_centroid(fisher.values))


def test_fig2_and_fig3_reuse_the_base_run_and_measure_its_checkpoints(root, capfd):
    run_experiment("fig2", "smoke", root)
    run_experiment("fig3", "smoke", root)
    assert capfd.readouterr().out.count("base: already trained, skipped.") == 2
    windows, blocks = read(root, "fig2"), read(root, "fig3")
    model, _ = checkpoints.load_model(checkpoint(root, "base", 2))
    images = to_unit_range(DIGITS.x_test[:SMOKE.eval_samples])
    direct = window_accuracies(model, images, DIGITS.y_test[:SMOKE.eval_samples],
                               SMOKE.window, 0.5, 0, 32)
    assert windows["at_epochs"]["2"]["accuracy"] == pytest.approx(direct["accuracy"])
    per_block = temporal_fisher(model, (DIGITS.x_train, DIGITS.y_train), SMOKE.fisher_samples,
                                per_layer=True).per_layer
    assert blocks["at_epochs"]["2"]["blocks"] == list(per_block)
    np.testing.assert_allclose(blocks["at_epochs"]["2"]["fisher"], list(per_block.values()),
                               rtol=1e-5)


def test_fig4_redoes_only_a_deleted_run(root, capfd):
    run_experiment("fig4", "smoke", root)
    record = read(root, "fig4")
    shorter = read_metrics(os.path.join(root, "smoke", "runs", "timesteps=2", "metrics.jsonl"))
    assert record["timesteps"]["2"]["centroid"] == [r["fisher/centroid"] for r in shorter]
    assert record["timesteps"]["3"] == record["arch"]["alexnet"]  # both are the base run
    capfd.readouterr()
    os.rename(os.path.join(root, "smoke", "runs", "timesteps=2"), os.path.join(root, "gone"))
    run_experiment("fig4", "smoke", root)
    out = capfd.readouterr().out
    assert "timesteps=2: trained in" in out and "base: already trained, skipped." in out
    assert read(root, "fig4")["timesteps"]["2"] == record["timesteps"]["2"]  # seeded


def test_unknown_experiments_and_scales_are_refused(tmp_path):
    with pytest.raises(UserError, match="Unknown experiment 'fig9'"):
        run_experiment("fig9", "smoke", str(tmp_path))
    with pytest.raises(UserError, match="Unknown scale 'huge'"):
        run_experiment("fig1", "huge", str(tmp_path))
