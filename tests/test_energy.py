"""Operation counts and energy, against counts made by hand on fixed spike patterns."""
import json

import keras
import numpy as np
import pytest

from conftest import run_tool
from tic_tf.energy import ENERGY_TABLES, energy_table, operation_counts
from tic_tf.errors import UserError
from tic_tf.models import TimeFolded, build_model


def spiking_conv(timesteps=3, size=4):
    """Spikes [N, T, size, size, 1] into a 3x3 'same' convolution with 2 filters."""
    inputs = keras.Input((timesteps, size, size, 1))
    conv = keras.layers.Conv2D(2, 3, padding="same", use_bias=False, name="conv")
    return keras.Model(inputs, TimeFolded(conv, name="conv_t")(inputs))


@pytest.mark.numerical
def test_convolution_accumulates_are_spikes_times_the_outputs_they_reach():
    # On a 4x4 map with 'same' padding a spike reaches 4 output positions from a corner, 6
    # from an edge, 9 from inside; each position has 2 output channels.
    spikes = np.zeros((2, 3, 4, 4, 1), np.float32)
    spikes[0, 0, 0, 0] = 1                        # corner: 2 x 4
    spikes[0, 1, 1, 1] = spikes[0, 1, 0, 2] = 1   # inside and edge: 2 x (9 + 6)
    spikes[1, 2, 3, 3] = spikes[1, 2, 2, 2] = 1   # corner and inside: 2 x (4 + 9)
    counts = operation_counts(spiking_conv(), spikes)
    (layer,) = counts.layers
    assert layer.operation == "accumulate"
    np.testing.assert_array_equal(layer.per_sample, [[8, 30, 0], [0, 0, 26]])
    assert layer.ann_macs == 4 * 4 * 9 * 1 * 2
    assert counts.per_image() == {"accumulate": 32.0, "multiply_accumulate": 0.0}
    assert counts.energy_per_image("45nm") == pytest.approx(0.9 * 32)
    # Early exit at t = 2 for the first input, t = 1 for the second: 38 + 0 accumulates.
    assert counts.per_image([2, 1])["accumulate"] == 19.0
    assert counts.energy_per_image({"accumulate": 2.0, "multiply_accumulate": 5.0},
                                   [2, 1]) == 38.0
    assert counts.ann_energy_per_image("45nm") == pytest.approx(4.6 * 288)


@pytest.mark.numerical
def test_dense_accumulates_count_nonzero_inputs_and_averaged_spikes_alike():
    inputs = keras.Input((2, 5))
    model = keras.Model(inputs, TimeFolded(keras.layers.Dense(3), name="dense_t")(inputs))
    # Averages of spikes (after pooling) are nonzero where any spike was: one AC each.
    values = np.array([[[1, 0, 0.25, 0, 1], [0, 0, 0, 0, 0]],
                       [[0.5, 0.5, 0.5, 0, 0], [1, 1, 1, 1, 1]]], np.float32)
    (layer,) = operation_counts(model, values).layers
    np.testing.assert_array_equal(layer.per_sample, [[9, 0], [9, 15]])
    assert layer.ann_macs == 15


@pytest.mark.numerical
def test_a_real_network_counts_its_stem_once_as_macs_and_its_convolutions_as_the_paper_does():
    """ResNet19 at width 1/4 on 32x32 images: 114.6M MACs per image and timestep in its
    convolutions after the stem, as an ANN (docs/performance.md); the stem, on the normalised
    image, is the one layer of MACs, run once per input."""
    model = build_model("resnet19", 10, 2, (32, 32, 3), width=0.25)
    images = np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)
    counts = operation_counts(model, images, batch_size=2)
    convolutions = [layer for layer in counts.layers
                    if layer.name not in ("stem_conv", "classifier_t")]
    assert sum(layer.ann_macs for layer in convolutions) / 1e6 == pytest.approx(114.6, abs=0.05)
    macs = [layer for layer in counts.layers if layer.operation == "multiply_accumulate"]
    assert [layer.name for layer in macs] == ["stem_conv"]
    np.testing.assert_array_equal(macs[0].per_sample, [[macs[0].ann_macs, 0]] * 3)
    for layer in counts.layers[1:]:  # spike-driven: at most every synapse, at every t
        assert layer.per_sample.max() <= layer.ann_macs


@pytest.mark.parametrize("table, message", [
    ("22nm", "Unknown energy table '22nm'; use one of 45nm"),
    ({"accumulate": 0.9}, "needs picojoules for exactly accumulate, multiply_accumulate; "
                          "missing multiply_accumulate."),
    ("accumulate=0.9,multiply_accumulate=x", "Cannot read the energy table"),
    ({"accumulate": -1.0, "multiply_accumulate": 4.6}, "must be non-negative"),
])
def test_bad_energy_tables_are_refused(table, message):
    with pytest.raises(UserError, match=message):
        energy_table(table)


def test_energy_tables_as_text():
    assert energy_table("accumulate=1,multiply_accumulate=3.5") == {
        "accumulate": 1.0, "multiply_accumulate": 3.5}
    assert energy_table("45nm") == ENERGY_TABLES["45nm"]


def test_evaluate_reports_energy_with_and_without_early_exit(trained_run, tmp_path):
    from tic_tf import checkpoints, early_exit
    from tic_tf.data import to_unit_range

    npz, run_dir, _ = trained_run
    out = tmp_path / "report"
    result = run_tool("evaluate", f"--checkpoints={run_dir}", f"--output_dir={out}",
                      f"--data_file={npz}", "--dataset=cifar10", "--eval_samples=16",
                      "--batch_size=8", "--evaluations=early_exit,energy",
                      "--exit_thresholds=0.2,0.99", "--exit_fisher_samples=0",
                      "--energy_table=accumulate=1,multiply_accumulate=10")
    assert result.returncode == 0, result.stderr
    row = json.loads((out / "report.json").read_text())["models"][0]
    images = to_unit_range(np.load(npz)["x_test"][:16])
    model, _ = checkpoints.load_model(str(run_dir))
    counts = operation_counts(model, images)
    table = {"accumulate": 1.0, "multiply_accumulate": 10.0}
    assert row["energy"]["energy_pj"] == pytest.approx(counts.energy_per_image(table))
    logits = model(images, training=False).numpy()
    for point in row["early_exit"]["points"]:
        exits = early_exit.exit_timesteps(logits, "confidence", point["threshold"])
        assert point["energy_pj"] == pytest.approx(counts.energy_per_image(table, exits))
    assert row["early_exit"]["full"]["energy_pj"] == pytest.approx(row["energy"]["energy_pj"])
    oracle = early_exit.oracle_timesteps(logits, np.load(npz)["y_test"][:16])
    assert row["early_exit"]["oracle"]["energy_pj"] == pytest.approx(
        counts.energy_per_image(table, oracle))
    assert (out / "energy.png").read_bytes()[:4] == b"\x89PNG"
    assert "equivalent ANN" in (out / "report.md").read_text()


def test_training_logs_the_energy_of_each_epochs_weights(tmp_path):
    import tensorflow as tf

    from tic_tf import checkpoints
    from tic_tf.data import DataConfig, to_unit_range
    from tic_tf.training import TrainConfig, train

    run_dir = tmp_path / "run"
    train(TrainConfig(arch="alexnet", width=0.125, timesteps=2, optimizer="adam",
                      learning_rate=0.003, batch_size=64, epochs=2, train_examples=256,
                      energy_every=2, energy_samples=16, energy_table="accumulate=1,"
                      "multiply_accumulate=3", export=False, verbose=0,
                      model_dir=str(run_dir)))
    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert "energy/pj" not in records[0]  # every 2 epochs
    model, _ = checkpoints.load_model(str(run_dir / "checkpoints" / "epoch-0002"))
    images = to_unit_range(DataConfig().load().x_test[:16])
    counts = operation_counts(model, images)
    per_image = counts.per_image()
    table = {"accumulate": 1.0, "multiply_accumulate": 3.0}
    assert records[1]["energy/accumulates"] == pytest.approx(per_image["accumulate"])
    assert records[1]["energy/multiply_accumulates"] == per_image["multiply_accumulate"]
    assert records[1]["energy/pj"] == pytest.approx(
        per_image["accumulate"] + 3 * per_image["multiply_accumulate"])
    assert records[1]["energy/vs_ann"] == pytest.approx(
        records[1]["energy/pj"] / counts.ann_energy_per_image(table))
    logged = {}
    for path in (run_dir / "tensorboard").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == "energy/pj":
                    logged[event.step] = float(tf.make_ndarray(value.tensor))
    assert logged == {2: pytest.approx(records[1]["energy/pj"])}


def test_training_refuses_a_bad_energy_table_or_count_before_any_work():
    from tic_tf.training import TrainConfig

    with pytest.raises(UserError, match="Unknown energy table '7nm'"):
        TrainConfig(energy_every=1, energy_table="7nm")
    with pytest.raises(UserError, match="--energy_every must be >= 0"):
        TrainConfig(energy_every=-1)
