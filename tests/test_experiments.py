"""The paper's experiments at smoke scale: every figure and JSON written, the JSON's numbers
those the library computes for the same checkpoints, finished runs skipped."""
import json
import os

import numpy as np
import pytest

from tic_tf import checkpoints
from tic_tf.attacks import fgsm
from tic_tf.callbacks import read_metrics
from tic_tf.data import DataConfig, to_unit_range
from tic_tf.errors import UserError
from tic_tf.experiments import SCALES, DataSources, fig4_runs, run_experiment
from tic_tf.fisher import information_centroid, temporal_fisher
from tic_tf.losses import mean_logits
from tic_tf.models import with_timesteps
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
    assert sorted(record["fisher_at_epochs"]["moving"]) == sorted(
        record["fisher_at_epochs"]["batch"]) == [str(e) for e in SMOKE.measured_epochs]
    for epoch, statistics in zip(SMOKE.measured_epochs, ("moving", "batch")):  # one each
        model, _ = checkpoints.load_model(checkpoint(root, "base", epoch))
        fisher = temporal_fisher(model, (DIGITS.x_train, DIGITS.y_train),
                                 SMOKE.fisher_samples, bn_statistics=statistics)
        measured = record["fisher_at_epochs"][statistics][str(epoch)]
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
    assert blocks["at_epochs"]["moving"]["2"]["blocks"] == list(per_block)
    np.testing.assert_allclose(blocks["at_epochs"]["moving"]["2"]["fisher"],
                               list(per_block.values()), rtol=1e-5)


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


def test_a_sweep_value_the_base_run_trains_with_by_default_is_the_base_run():
    # The cpu scale's base run leaves tau at TrainConfig's 2.0 and names resnet19.
    assert list(fig4_runs(SCALES["cpu"])) == ["base", "timesteps=6", "timesteps=8", "tau=0.75",
                                              "tau=4", "arch=alexnet"]


def predicted_accuracy(model, images, labels):
    return float(np.mean(np.argmax(mean_logits(model(images, training=False)), -1) == labels))


def test_fig5_and_table1_measure_the_same_alpha_runs(root, capfd):
    fig5 = run_experiment("fig5", "smoke", root)
    table1 = run_experiment("table1", "smoke", root)
    names = [f"alpha={alpha:g}" for alpha in SMOKE.alphas]
    assert capfd.readouterr().out.count("already trained, skipped.") == len(names)
    images = to_unit_range(DIGITS.x_test[:SMOKE.eval_samples])
    labels = DIGITS.y_test[:SMOKE.eval_samples]
    for name in names:
        run = os.path.join(root, "smoke", "runs", name)
        model, _ = checkpoints.load_model(checkpoint(root, name, SMOKE.base["epochs"]))
        fisher = temporal_fisher(model, (DIGITS.x_train, DIGITS.y_train), SMOKE.fisher_samples)
        np.testing.assert_allclose(fig5[name]["fisher"], fisher.values, rtol=1e-5)
        metrics = read_metrics(os.path.join(run, "metrics.jsonl"))
        assert fig5[name]["train_loss_t"]["3"] == [r["loss_t3"] for r in metrics]
        accuracy = table1[name]["accuracy"]
        assert accuracy["clean"] == pytest.approx(predicted_accuracy(model, images, labels))
        attacked = fgsm(model, images, labels, 8 / 255)
        assert accuracy["fgsm"] == pytest.approx(predicted_accuracy(model, attacked, labels))
    # The high alpha (above the loss) ascends where the low one descends: different models.
    assert fig5[names[0]]["fisher"] != fig5[names[1]]["fisher"]
    assert read(root, "table1")[names[0]] == table1[names[0]]


def test_fig7_records_every_round_of_every_track(root):
    record = run_experiment("fig7", "smoke", root)["base"]
    tracks = SMOKE.pruning["retrain_timesteps"]
    auto = record["auto"]["retrain_timesteps"]
    assert list(record["tracks"]) == [str(t) for t in dict.fromkeys(
        auto if t == "auto" else t for t in tracks)]
    round_dir = os.path.join(root, "smoke", "fig7_pruning", "base", "T2", "round-02")
    pruned, _ = checkpoints.load_model(round_dir)
    kernels = [w for w in pruned.weights if "kernel" in w.path and "mask" not in w.path]
    zeros = sum(int(np.sum(k.numpy() == 0)) for k in kernels)
    assert zeros / sum(k.numpy().size for k in kernels) == pytest.approx(
        record["tracks"]["2"]["sparsity"][-1], abs=1e-3)
    images = to_unit_range(DIGITS.x_test[:SMOKE.eval_samples])
    labels = DIGITS.y_test[:SMOKE.eval_samples]
    at_full = with_timesteps(pruned, SMOKE.base["timesteps"])
    assert record["tracks"]["2"]["accuracy_at_T"][-1] == pytest.approx(
        predicted_accuracy(at_full, images, labels))


def test_an_unavailable_data_set_stops_the_experiment_before_training(tmp_path):
    sources = DataSources(files={"fashion_mnist": str(tmp_path / "missing.npz")})
    with pytest.raises(UserError) as caught:
        run_experiment("fig4", "cpu", str(tmp_path), sources)
    message = str(caught.value)
    assert message.startswith("fig4 at scale cpu needs the fashion_mnist data set, which is "
                              f"not available here ({tmp_path}/missing.npz does not exist)")
    for way in ("--data_dir=DIR", "--manual_dir=DIR", "--data_files=fashion_mnist=PATH.npz"):
        assert way in message
    assert os.listdir(tmp_path) == []  # no run directory, nothing trained


def test_data_files_replace_a_scales_data_and_misspelt_names_are_refused():
    sources = DataSources(files={"fashion_mnist": "/data/f.npz"})
    config = sources.config(SCALES["cpu"].base["data"])
    assert (config.dataset, config.data_file) == ("fashion_mnist", "/data/f.npz")
    with pytest.raises(UserError, match="Unknown dataset 'fashoin_mnist'"):
        DataSources(files={"fashoin_mnist": "/data/f.npz"})


def test_unknown_experiments_and_scales_are_refused(tmp_path):
    with pytest.raises(UserError, match="Unknown experiment 'fig9'"):
        run_experiment("fig9", "smoke", str(tmp_path))
    with pytest.raises(UserError, match="Unknown scale 'huge'"):
        run_experiment("fig1", "huge", str(tmp_path))
