"""Datasets (embedded, TFDS or a local .npz), per-dataset statistics, augmentation and tf.data
pipelines.

All sources are loaded once into memory as uint8 arrays `[N, H, W, C]` with integer labels;
the pipelines turn them into float images in [0, 1]. Models normalise internally.
"""
import dataclasses
import functools
import os
import zipfile

import numpy as np
import tensorflow as tf

from tic_tf.errors import DataUnavailable, UserError
from tic_tf.options import check_choices, option, require


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    tfds_name: str
    num_classes: int
    image_shape: tuple
    mean: tuple
    std: tuple
    horizontal_flip: bool  # mirrored digits are different digits, so not for SVHN
    crop_padding: int = 4  # random-crop padding; 4 pixels as in the reference (32x32 images)
    embedded: bool = False  # ships with a dependency: no download, no --data_file


DATASETS = {
    spec.name: spec for spec in (
        DatasetSpec("cifar10", "cifar10", 10, (32, 32, 3),
                    (0.4913, 0.4821, 0.4465), (0.2023, 0.1994, 0.2010), True),
        DatasetSpec("cifar100", "cifar100", 100, (32, 32, 3),
                    (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True),
        DatasetSpec("svhn", "svhn_cropped", 10, (32, 32, 3),
                    (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), False),
        DatasetSpec("fashion_mnist", "fashion_mnist", 10, (28, 28, 1),
                    (0.2860,), (0.3530,), True),
        # scikit-learn's 1,797 handwritten 8x8 digits (0-16 grey levels), kept at their native
        # 8x8: upsampling would only cost compute. A one-pixel crop padding is to 8x8 what four
        # pixels are to 32x32.
        DatasetSpec("digits", None, 10, (8, 8, 1), (0.3054,), (0.3753,), False,
                    crop_padding=1, embedded=True),
    )
}
DIGITS_TEST_EXAMPLES = 360  # the last 360 digits (20%), written by other people than the rest
# A data set of any image shape and number of classes, described by its --data_file.
NPZ = "npz"


@dataclasses.dataclass
class Arrays:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data set, and where its images come from."""
    dataset: str = option("digits", "Dataset; it also sets the normalisation statistics, "
                          "number of classes and augmentation. digits ships with scikit-learn; "
                          "the others come from TFDS or --data_file; npz: images of any shape "
                          "in --data_file, its classes and statistics read from the file.",
                          choices=sorted(DATASETS) + [NPZ])
    data_dir: str = option(None, "TFDS data directory (default: TFDS's own).", kind=str)
    manual_dir: str = option(None, "Folder holding the dataset's original archives, for "
                             "preparing TFDS offline (TFDS manual_dir).", kind=str)
    data_file: str = option(None, "An .npz with x_train, y_train, x_test, y_test (uint8 "
                            "images [N,H,W,C], integer labels) used instead of TFDS.", kind=str)

    def __post_init__(self):
        check_choices(self)
        require(self.dataset != NPZ or self.data_file,
                "--dataset=npz reads its images from --data_file; pass the .npz.")

    @functools.cached_property
    def spec(self):
        return npz_spec(self.data_file) if self.dataset == NPZ else get_spec(self.dataset)

    def load(self):
        """The data set's train and test arrays."""
        return load_arrays(self.spec, self.data_dir, self.manual_dir, self.data_file)


def get_spec(name):
    if name not in DATASETS:
        raise UserError(f"Unknown dataset {name!r}; choose one of {sorted(DATASETS)}.")
    return DATASETS[name]


SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")  # the original cropped-digits release


def load_arrays(spec, data_dir=None, manual_dir=None, data_file=None):
    """Train and test arrays from `data_file` (.npz) if given, else the embedded copy, SVHN's
    original .mat files in `manual_dir`, or TFDS."""
    if data_file:
        return load_npz(data_file, spec)
    if spec.embedded:
        return _load_digits(spec)
    if spec.name == "svhn" and manual_dir and all(
            os.path.isfile(os.path.join(manual_dir, name)) for name in SVHN_FILES):
        return load_svhn_mat(manual_dir, spec)
    return _load_tfds(spec, data_dir, manual_dir)


def load_svhn_mat(folder, spec):
    """SVHN from its original train_32x32.mat / test_32x32.mat (MATLAB: X [32, 32, 3, N]
    uint8, y [N, 1] with 10 standing for the digit 0), read without TFDS."""
    from scipy.io import loadmat  # a dependency of scikit-learn

    splits = []
    for name in SVHN_FILES:
        path = os.path.join(folder, name)
        try:
            content = loadmat(path)
        except (OSError, ValueError, NotImplementedError) as error:
            raise UserError(f"Cannot read {path} as a MATLAB file ({error}).") from error
        if "X" not in content or "y" not in content:
            raise UserError(f"{path} lacks the arrays X and y of SVHN's .mat release.")
        images = np.ascontiguousarray(np.transpose(content["X"], (3, 0, 1, 2)))
        labels = np.asarray(content["y"]).reshape(-1).astype(np.int64) % 10
        splits += [_as_uint8_images(images, spec, f"{path}: X"),
                   _as_labels(labels, spec, f"{path}: y")]
    return Arrays(*splits)


def _load_digits(spec):
    from sklearn.datasets import load_digits  # bundled with scikit-learn, read from disk

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    labels = _as_labels(digits.target, spec, "scikit-learn digits")
    split = len(images) - DIGITS_TEST_EXAMPLES
    return Arrays(images[:split], labels[:split], images[split:], labels[split:])


def _read_npz(path):
    """The arrays of an .npz holding x_train, y_train, x_test, y_test."""
    if not os.path.isfile(path):
        problem = "is a directory" if os.path.isdir(path) else "does not exist"
        raise DataUnavailable(f"Data file {path} {problem}; pass an .npz with x_train, "
                              "y_train, x_test, y_test to --data_file.", f"{path} {problem}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            content = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:  # not an npz archive
        raise UserError(f"Cannot read {path} as an .npz archive ({error}).") from error
    missing = {"x_train", "y_train", "x_test", "y_test"} - set(content)
    if missing:
        raise UserError(f"{path} lacks the arrays {sorted(missing)}; it needs x_train, y_train, "
                        "x_test and y_test.")
    return content


def npz_spec(path):
    """The `DatasetSpec` of the .npz at `path` for `--dataset=npz`: its images' shape, as many
    classes as its largest label needs, its training images' mean and standard deviation per
    channel (for the model's normalisation), no flipping (not every data set is mirror-
    symmetric), and a random-crop padding of an eighth of the image's smaller side."""
    content = _read_npz(path)
    images = content["x_train"]
    if images.ndim == 3:
        images = images[..., None]  # grey images stored without a channel axis
    if images.ndim != 4 or len(images) == 0 or min(images.shape[1:]) < 1:
        raise UserError(f"{path}: x_train has shape {images.shape}; --dataset=npz needs "
                        "images [N, H, W, C] (or [N, H, W]) with N > 0.")
    labels = [np.asarray(content[key]).reshape(-1) for key in ("y_train", "y_test")]
    if not all(np.issubdtype(y.dtype, np.integer) and len(y) for y in labels):
        raise UserError(f"{path}: y_train and y_test must be non-empty integer class indices.")
    classes = int(max(y.max() for y in labels)) + 1
    require(classes >= 2, f"{path}: the labels name {classes} class; a classifier needs two.")
    pixels = images / np.float64(255 if images.dtype == np.uint8 else 1)
    mean, std = pixels.mean(axis=(0, 1, 2)), pixels.std(axis=(0, 1, 2))
    std = np.where(std > 0, std, 1.0)  # a constant channel: centred, not scaled
    return DatasetSpec(NPZ, None, classes, tuple(int(d) for d in images.shape[1:]),
                       tuple(float(m) for m in mean), tuple(float(s) for s in std), False,
                       crop_padding=max(1, round(min(images.shape[1:3]) / 8)))


def load_npz(path, spec):
    """Read and validate an .npz holding x_train, y_train, x_test, y_test."""
    content = _read_npz(path)
    splits = {}
    for split in ("train", "test"):
        images = _as_uint8_images(content[f"x_{split}"], spec, f"{path}: x_{split}")
        labels = _as_labels(content[f"y_{split}"], spec, f"{path}: y_{split}")
        if len(images) != len(labels):
            raise UserError(f"{path}: x_{split} holds {len(images)} images but y_{split} "
                            f"{len(labels)} labels.")
        splits[split] = (images, labels)
    return Arrays(*splits["train"], *splits["test"])


def _as_uint8_images(images, spec, where):
    if images.ndim == len(spec.image_shape) and spec.image_shape[-1] == 1:
        images = images[..., None]  # grey images stored without a channel axis
    if images.ndim != 4 or tuple(images.shape[1:]) != spec.image_shape or len(images) == 0:
        raise UserError(f"{where} has shape {images.shape}; {spec.name} needs "
                        f"[N, {', '.join(map(str, spec.image_shape))}] with N > 0.")
    if images.dtype == np.uint8:
        return images
    if np.issubdtype(images.dtype, np.floating):
        if not np.all(np.isfinite(images)):
            raise UserError(f"{where} holds NaN or infinite pixels; store uint8 pixels (0-255) "
                            "or finite floats scaled to [0, 1].")
        if images.min() < 0 or images.max() > 1:
            raise UserError(f"{where} holds floats outside [0, 1]; store uint8 pixels (0-255) "
                            "or floats scaled to [0, 1].")
        return np.round(images * 255).astype(np.uint8)
    raise UserError(f"{where} has dtype {images.dtype}; store uint8 pixels or floats in [0, 1].")


def _as_labels(labels, spec, where):
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{where} must be a 1-D integer array of class indices, "
                        f"got shape {labels.shape} and dtype {labels.dtype}.")
    if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise UserError(f"{where} has labels in [{labels.min()}, {labels.max()}]; {spec.name} "
                        f"needs labels in [0, {spec.num_classes - 1}].")
    return labels.astype(np.int32)


def _load_tfds(spec, data_dir, manual_dir):
    try:  # slow to import: only this path needs it
        import tensorflow_datasets as tfds
    except ImportError as error:
        svhn = (" or pass --manual_dir=FOLDER holding SVHN's train_32x32.mat and "
                "test_32x32.mat," if spec.name == "svhn" else "")
        raise DataUnavailable(
            f"The {spec.name} data set comes from TensorFlow Datasets, which cannot be imported "
            f"({error}): pip install tensorflow-datasets,"
            f"{svhn} or pass --data_file=PATH.npz with x_train, y_train, x_test, y_test "
            "arrays.", "TensorFlow Datasets is not installed") from error

    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    try:
        train, test = tfds.load(
            spec.tfds_name, split=["train", "test"], as_supervised=True, data_dir=data_dir,
            download_and_prepare_kwargs={"download_config": download_config})
    # Network and file errors, unknown names, a missing manual archive, a failed download.
    except (OSError, ValueError, AssertionError, tfds.download.DownloadError) as error:
        cause = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        raise DataUnavailable(
            f"Could not load TFDS dataset {spec.tfds_name!r} ({cause}). Without internet, either "
            "point --data_dir at a directory holding the prepared TFDS dataset, or put the "
            "original archives in a folder and pass it as --manual_dir (TFDS manual_dir), or "
            "pass --data_file=PATH.npz with x_train, y_train, x_test, y_test arrays.",
            f"TFDS could not load {spec.tfds_name}: {cause}") from error
    return Arrays(*_to_arrays(train, spec, "TFDS train split"),
                  *_to_arrays(test, spec, "TFDS test split"))


def _to_arrays(dataset, spec, where):
    images, labels = [], []
    for image_batch, label_batch in dataset.batch(4096).as_numpy_iterator():
        images.append(image_batch)
        labels.append(label_batch)
    if not images:
        raise UserError(f"{where} of {spec.tfds_name} is empty.")
    return (_as_uint8_images(np.concatenate(images), spec, where),
            _as_labels(np.concatenate(labels), spec, where))


def _augment(image, seed, spec):
    """Random crop after zero-padding, plus a horizontal flip where it makes sense."""
    height, width, _ = spec.image_shape
    pad = spec.crop_padding
    padded = tf.image.pad_to_bounding_box(image, pad, pad, height + 2 * pad, width + 2 * pad)
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = tf.image.stateless_random_crop(padded, spec.image_shape, crop_seed)
    if spec.horizontal_flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return image


def _to_unit_range(images):
    return tf.cast(images, tf.float32) / 255.0


def first_examples(arrays, train=0, test=0):
    """`arrays` with only the first `train` training and `test` test examples (0: all):
    fixed subsets for CPU-sized studies."""
    subsets = {}
    for split, count in (("train", train), ("test", test)):
        images, labels = getattr(arrays, f"x_{split}"), getattr(arrays, f"y_{split}")
        if count < 0 or count > len(images):
            raise UserError(f"Asked for {count} {split} examples, but the data set has "
                            f"{len(images)}; pass 0 (all) to {len(images)} to "
                            f"--{split}_examples.")
        if count:
            subsets.update({f"x_{split}": images[:count], f"y_{split}": labels[:count]})
    return dataclasses.replace(arrays, **subsets)


def to_unit_range(images):
    """uint8 pixel arrays as float32 in [0, 1] (float arrays pass through)."""
    images = np.asarray(images)
    return images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(
        np.float32)


def steps_per_epoch(count, batch_size):
    """Full batches per epoch (the last partial batch is dropped)."""
    if batch_size > count:
        raise UserError(f"batch_size {batch_size} exceeds the {count} training examples; "
                        "lower --batch_size.")
    return count // batch_size


def _shard_by_data():
    # Every worker builds the whole pipeline and keeps its part of each global batch; there are
    # no files to shard by, and the batches stay those of a one-device run.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


_SHARD_BY_DATA = _shard_by_data()


def train_dataset(images, labels, spec, batch_size, seed, start_epoch, epochs, augment=True):
    """Batches for epochs `start_epoch..epochs-1` and the number of steps per epoch.

    augment: random crop (and flip where the data set allows it); off, the images as they are.

    Shuffling and augmentation are stateless functions of (seed, epoch, example), so a run
    resumed at any epoch sees exactly the batches an uninterrupted run would.
    """
    count = len(images)
    steps = steps_per_epoch(count, batch_size)
    images, labels = tf.constant(images), tf.constant(labels)

    def epoch_examples(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count, dtype=tf.int64), seed=tf.stack([tf.cast(seed, tf.int64), epoch]))
        indices = order[: steps * batch_size]
        return tf.data.Dataset.from_tensor_slices(
            (indices, tf.fill([steps * batch_size], epoch)))

    def example(index, epoch):
        example_seed = tf.stack([tf.cast(seed, tf.int64) + 7919 * epoch, index])
        image = tf.gather(images, index)
        if augment:
            image = _augment(image, example_seed, spec)
        return _to_unit_range(image), tf.gather(labels, index)

    dataset = (tf.data.Dataset.range(start_epoch, epochs)
               .flat_map(epoch_examples)
               .map(example, num_parallel_calls=tf.data.AUTOTUNE)
               .batch(batch_size, drop_remainder=True)
               .prefetch(tf.data.AUTOTUNE))
    return dataset.with_options(_SHARD_BY_DATA), steps


def eval_dataset(images, labels, batch_size):
    """Test batches in order, without augmentation."""
    return (tf.data.Dataset.from_tensor_slices((images, labels))
            .batch(batch_size)
            .map(lambda x, y: (_to_unit_range(x), y), num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE)
            .with_options(_SHARD_BY_DATA))
