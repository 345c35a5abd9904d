import json
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import assert_refused, write_npz
from tic_tf import checkpoints, cli, data
from tic_tf.errors import UserError
from tic_tf.training import TrainConfig, train

CIFAR10 = data.get_spec("cifar10")


def test_npz_loads_as_uint8_images_and_int_labels(tiny_npz):
    arrays = data.load_arrays(CIFAR10, data_file=tiny_npz)
    assert arrays.x_train.shape == (64, 32, 32, 3) and arrays.x_train.dtype == np.uint8
    assert arrays.y_test.shape == (32,) and arrays.y_test.dtype == np.int32


def test_float_images_in_unit_range_are_accepted(tmp_path):
    path = write_npz(tmp_path / "f.npz", x_test=np.full((32, 32, 32, 3), 0.5, np.float32))
    assert data.load_arrays(CIFAR10, data_file=path).x_test.max() == 128


@pytest.mark.parametrize("overrides, message", [
    (dict(y_test=None), r"lacks the arrays \['y_test'\]"),
    (dict(x_train=np.zeros((64, 28, 28, 3), np.uint8)), "has shape"),
    (dict(y_train=np.full(64, 10)), r"labels in \[10, 10\]"),
    (dict(y_train=np.zeros(63, int)), "64 images but y_train 63 labels"),
    (dict(x_test=np.full((32, 32, 32, 3), 2.0)), "floats outside"),
    (dict(y_test=np.zeros(32, np.float32)), "integer array"),
    (dict(x_train=None, x_training=np.zeros((64, 32, 32, 3), np.uint8)),
     r"lacks the arrays \['x_train'\]"),
    (dict(x_test=np.full((32, 32, 32, 3), np.nan, np.float32)), "NaN or infinite pixels"),
    (dict(x_train=np.zeros((64, 32, 32, 3), np.int64)), "has dtype int64"),
    (dict(x_test=np.zeros((0, 32, 32, 3), np.uint8), y_test=np.zeros(0, int)),
     r"x_test has shape \(0, 32, 32, 3\); cifar10 needs \[N, 32, 32, 3\] with N > 0"),
    (dict(y_train=np.full(64, -1)), r"labels in \[-1, -1\]"),
    (dict(y_train=np.zeros((64, 2), int)), r"got shape \(64, 2\)"),
])
def test_malformed_npz_is_refused_with_reason(tmp_path, overrides, message):
    path = write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(UserError, match=message):
        data.load_arrays(CIFAR10, data_file=path)


def test_missing_or_unreadable_npz(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        data.load_arrays(CIFAR10, data_file=str(tmp_path / "absent.npz"))
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="Cannot read"):
        data.load_arrays(CIFAR10, data_file=str(garbage))
    whole = open(write_npz(tmp_path / "whole.npz"), "rb").read()
    (tmp_path / "truncated.npz").write_bytes(whole[:len(whole) // 2])  # a copy cut short
    with pytest.raises(UserError, match="Cannot read .*truncated.npz as an .npz archive"):
        data.load_arrays(CIFAR10, data_file=str(tmp_path / "truncated.npz"))
    with pytest.raises(UserError, match=f"Data file {tmp_path} is a directory; "):
        data.load_arrays(CIFAR10, data_file=str(tmp_path))


def test_unknown_dataset():
    with pytest.raises(UserError, match="Unknown dataset 'mnist'"):
        data.get_spec("mnist")
    with pytest.raises(ValueError):  # one family for Python callers: UserError is a ValueError
        data.get_spec("mnist")


def test_a_bug_while_loading_is_not_reported_as_unavailable_data(tmp_path, monkeypatch):
    """Only the errors a bad file or a failed download raise become a UserError."""
    import tensorflow_datasets as tfds

    def bug(*args, **kwargs):
        raise TypeError("a bug, not bad data")

    npz = write_npz(tmp_path / "data.npz")
    monkeypatch.setattr(np, "load", bug)
    with pytest.raises(TypeError, match="a bug"):
        data.load_arrays(CIFAR10, data_file=npz)
    monkeypatch.setattr(tfds, "load", bug)
    with pytest.raises(TypeError, match="a bug"):
        data.load_arrays(CIFAR10)


@pytest.mark.parametrize("name", ["cifar10", "svhn", "fashion_mnist"])
def test_tfds_path_with_mocked_data(name):
    import tensorflow_datasets as tfds
    spec = data.get_spec(name)
    with tfds.testing.mock_data(num_examples=12):
        arrays = data.load_arrays(spec)
    assert arrays.x_train.shape == (12, *spec.image_shape)
    assert arrays.y_train.max() < spec.num_classes


def test_tfds_failure_names_every_offline_option(monkeypatch):
    import tensorflow_datasets as tfds

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to establish a new connection")

    monkeypatch.setattr(tfds, "load", offline)
    with pytest.raises(UserError) as error:
        data.load_arrays(CIFAR10, data_dir="/nowhere")
    for option in ("--data_dir", "--manual_dir", "--data_file"):
        assert option in str(error.value)


def test_tfds_unimportable_names_the_package_and_the_alternatives(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import raises ImportError
    with pytest.raises(UserError, match=r"cannot be imported .*: pip install tensorflow-datasets.*"
                                        r"--manual_dir=FOLDER holding SVHN's train_32x32.mat.*"
                                        r"--data_file=PATH.npz"):
        data.load_arrays(data.get_spec("svhn"))


def test_svhn_reads_its_original_mat_files_with_label_10_for_zero(tmp_path, monkeypatch):
    from scipy.io import savemat

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # no TFDS needed
    rng = np.random.default_rng(0)
    expected = {}
    for split, count in (("train", 7), ("test", 5)):
        images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        digits = np.arange(count) % 10
        # MATLAB layout: X [32, 32, 3, N], y [N, 1] as doubles, digit 0 stored as 10.
        savemat(tmp_path / f"{split}_32x32.mat",
                {"X": np.transpose(images, (1, 2, 3, 0)),
                 "y": np.where(digits == 0, 10, digits).astype(np.float64)[:, None]})
        expected[split] = (images, digits)
    arrays = data.load_arrays(data.get_spec("svhn"), manual_dir=str(tmp_path))
    np.testing.assert_array_equal(arrays.x_train, expected["train"][0])
    np.testing.assert_array_equal(arrays.y_train, expected["train"][1])
    np.testing.assert_array_equal(arrays.x_test, expected["test"][0])
    np.testing.assert_array_equal(arrays.y_test, expected["test"][1])


def batches(dataset):
    return [(x.numpy(), y.numpy()) for x, y in dataset]


def test_training_pipeline_is_deterministic_and_resumes_mid_run():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 40).astype(np.int32)
    full, steps = data.train_dataset(images, labels, CIFAR10, 8, seed=3, start_epoch=0, epochs=3)
    assert steps == 5
    full = batches(full)
    resumed = batches(data.train_dataset(images, labels, CIFAR10, 8, 3, 2, 3)[0])
    assert len(full) == 15 and len(resumed) == 5
    for (x_full, y_full), (x_res, y_res) in zip(full[10:], resumed):
        np.testing.assert_array_equal(x_full, x_res)
        np.testing.assert_array_equal(y_full, y_res)
    # Epochs differ in order and augmentation; images are floats in [0, 1].
    assert not np.array_equal(full[0][0], full[5][0])
    assert full[0][0].dtype == np.float32 and 0 <= full[0][0].min() and full[0][0].max() <= 1


def test_augmentation_crops_with_padding_and_flips_only_where_allowed():
    # Pixel values grow from left to right, so a flip shows as a decreasing row.
    columns = np.arange(1, 33, dtype=np.uint8) * 7
    image = tf.constant(np.broadcast_to(columns[None, :, None], (32, 32, 3)))

    def augmented_rows(spec):
        return [data._augment(image, tf.constant([0, i], tf.int64), spec).numpy()[16, :, 0]
                for i in range(40)]

    def flipped(row):
        values = row[row > 0].astype(int)  # zero padding shifted in by the crop is ignored
        return bool(np.all(np.diff(values) < 0))

    cifar_rows, svhn_rows = augmented_rows(CIFAR10), augmented_rows(data.get_spec("svhn"))
    assert any(flipped(row) for row in cifar_rows)
    assert not any(flipped(row) for row in svhn_rows)
    padding_seen = [int(np.sum(row == 0)) for row in svhn_rows]
    assert len(set(padding_seen)) > 2 and max(padding_seen) <= 4  # random shifts up to 4 px


def test_embedded_digits_load_without_download_and_match_their_statistics():
    from sklearn.datasets import load_digits

    spec = data.get_spec("digits")
    arrays = data.load_arrays(spec, data_dir="/nowhere")  # never touches TFDS
    assert arrays.x_train.shape == (1437, 8, 8, 1) and arrays.x_test.shape == (360, 8, 8, 1)
    raw = load_digits()
    # 16 grey levels to 0-255: level 16 is white, level 8 is 128 (rounded half up).
    np.testing.assert_array_equal(arrays.x_test[:, :, :, 0],
                                  np.floor(raw.images[1437:] * 255 / 16 + 0.5))
    np.testing.assert_array_equal(arrays.y_train, raw.target[:1437])
    train = arrays.x_train / 255.0
    assert spec.mean[0] == pytest.approx(train.mean(), abs=1e-4)
    assert spec.std[0] == pytest.approx(train.std(), abs=1e-4)
    assert set(np.unique(arrays.y_test)) == set(range(10))


def test_digits_augmentation_shifts_by_at_most_one_pixel_and_never_flips():
    columns = np.arange(1, 9, dtype=np.uint8) * 30
    image = tf.constant(np.broadcast_to(columns[None, :, None], (8, 8, 1)))
    rows = [data._augment(image, tf.constant([0, i], tf.int64), data.get_spec("digits"))
            .numpy()[4, :, 0].astype(int) for i in range(40)]
    shifts = {int(np.sum(row == 0)) for row in rows}
    assert shifts == {0, 1}
    assert all(np.all(np.diff(row[row > 0]) > 0) for row in rows)


def test_npz_of_any_image_shape_trains_with_its_own_classes_and_statistics(tmp_path):
    npz = write_npz(tmp_path / "data.npz", train=32, test=16, shape=(48, 48, 2), classes=3)
    arrays = np.load(npz)
    spec = data.DataConfig(dataset="npz", data_file=npz).spec
    pixels = arrays["x_train"] / 255.0
    assert (spec.image_shape, spec.num_classes, spec.crop_padding) == ((48, 48, 2), 3, 6)
    np.testing.assert_allclose(spec.mean, pixels.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(spec.std, pixels.std(axis=(0, 1, 2)), rtol=1e-12)

    run_dir = tmp_path / "run"
    train(cli.parse(TrainConfig, [
        "--dataset=npz", f"--data_file={npz}", "--arch=alexnet", "--width=0.0625",
        "--timesteps=2", "--epochs=1", "--batch_size=16", "--fisher_every=0", "--export=false",
        "--verbose=0", f"--model_dir={run_dir}"]))
    model, config = checkpoints.load_model(str(run_dir))
    assert (config["input_shape"], config["num_classes"]) == ([48, 48, 2], 3)
    np.testing.assert_allclose(config["std"], spec.std)
    logits = model(arrays["x_test"] / np.float32(255), training=False).numpy()
    accuracy = np.mean(logits.mean(axis=1).argmax(axis=1) == arrays["y_test"])
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert_refused(TrainConfig, train, ["--dataset=npz", f"--model_dir={tmp_path / 'none'}"],
                   "--dataset=npz reads its images from --data_file", tmp_path / "none")
