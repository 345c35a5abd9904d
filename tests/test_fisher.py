"""The exact Fisher estimator against per-sample gradient tapes, route by route; its pieces
(tests/test_fisher_batch_norm.py: with batch statistics, and the batch-mean approximation)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from fisher_reference import (STEPS, active_model, active_setup, assert_matches_brute_force,
                              brute_force)
from tic_tf.errors import UserError
from tic_tf.fisher import (_conv_route, _conv_sq_norm, _parameter_layers, _patches,
                           _samples_as_channels, _shifted_gram, gumbel_noise,
                           information_centroid, sample_model_labels, temporal_fisher)
from tic_tf.kernels import grouped_filter_gradient
from tic_tf.models import set_precision, with_timesteps

# Values that depend on the kernel library: the suite runs these with oneDNN on and off.
pytestmark = pytest.mark.numerical


@pytest.fixture(scope="module")
def setup():
    return active_setup()


def test_exact_fisher_matches_per_sample_brute_force(setup):
    model, images, labels = setup  # in two batches
    result, expected = assert_matches_brute_force(model, images, labels, batch_size=4)
    assert expected.min() > 0
    assert result.centroid == pytest.approx(information_centroid(expected), rel=1e-5)


@pytest.mark.parametrize("arch, shape, neuron", [
    ("resnet19", (28, 28, 1), dict(neuron="if", reset="soft", surrogate="sigmoid")),
    ("alexnet", (32, 32, 3), dict(reset="soft", detach_reset=False, surrogate="fast_sigmoid",
                                  tau=0.75)),
])
def test_exact_fisher_stays_exact_for_other_neurons_resets_and_surrogates(arch, shape, neuron):
    model = active_model(arch, shape, seed=6, **neuron)
    rng = np.random.default_rng(6)
    images = rng.random((4, *shape), dtype=np.float32)
    labels = rng.integers(0, 5, 4).astype(np.int32)
    _, expected = assert_matches_brute_force(model, images, labels, batch_size=4)
    assert expected.min() > 0


def test_model_label_fisher_matches_brute_force_with_the_same_draws(setup):
    model, images, labels = setup
    result = temporal_fisher(model, (images, labels), 8, labels="model", batch_size=8, seed=7)
    noise = gumbel_noise(8, STEPS, 5, tf.constant([7, 0], tf.int64))
    drawn = sample_model_labels(model(images, training=False), noise).numpy()
    assert len(np.unique(drawn)) > 1
    expected, _ = brute_force(model, images, drawn)
    np.testing.assert_allclose(result.values, expected, rtol=1e-4)


def test_exact_fisher_of_a_bfloat16_model_matches_its_per_sample_gradients(grouped_kernels):
    """With the grouped convolution its convolutions' per-sample kernel gradients come out in
    bfloat16, as the model's own gradients do; without it (Eigen has no bfloat16 grouped
    kernel, nor a float32 one), from the same bfloat16 inputs and output gradients multiplied
    in float32, which here agrees as closely."""
    set_precision("bfloat16")
    try:
        model = active_model(seed=5)
    finally:
        set_precision("none")
    assert model.get_layer("stem_conv").compute_dtype == "bfloat16"
    rng = np.random.default_rng(5)
    images = rng.random((4, 28, 28, 1), dtype=np.float32)
    labels = rng.integers(0, 5, 4).astype(np.int32)
    result = temporal_fisher(model, (images, labels), 4, batch_size=4)
    expected, _ = brute_force(model, images, labels)
    np.testing.assert_allclose(result.values, expected, rtol=1e-4)


def test_exact_fisher_on_vgg_and_alexnet_with_dense_layers():
    """In batch-norm modes the ResNet19 tests leave to the batch-statistics ones."""
    rng = np.random.default_rng(2)
    images = rng.random((3, 32, 32, 3), dtype=np.float32)
    labels = rng.integers(0, 5, 3).astype(np.int32)
    for arch, batch_norm in (("alexnet", "shared"), ("vgg16", "bntt")):
        model = active_model(arch, (32, 32, 3), batch_norm=batch_norm)
        result = temporal_fisher(model, (images, labels), 3, batch_size=3)
        np.testing.assert_allclose(result.values, brute_force(model, images, labels)[0],
                                   rtol=1e-4)


@pytest.fixture(params=["grouped", "no_grouped"])
def grouped_kernels(request, monkeypatch):
    """Runs a test with the grouped backward-filter convolution (where this process's kernels
    have it: oneDNN, cuDNN) and as on a backend without it (Eigen), whatever the machine."""
    if request.param == "no_grouped":
        monkeypatch.setattr("tic_tf.fisher.grouped_filter_gradient", lambda dtype: False)
    elif not grouped_filter_gradient("float32"):
        pytest.skip("this TensorFlow's kernels have no grouped backward-filter convolution "
                    "(Eigen); TF_ENABLE_ONEDNN_OPTS=1 or a GPU covers that route")
    return request.param == "grouped"


def test_exact_fisher_through_every_convolution_route_matches_brute_force(grouped_kernels):
    """On 8x8 images the later 3x3 convolutions have few pixels and many channels: their
    per-sample gradients come from the Gram matrix of their image patches (made from the
    pixels' for stride 1, from the patches themselves for stride 2), the others' from a
    grouped convolution, or without one from their image patches made for each t."""
    model = active_model("resnet19", (8, 8, 1), seed=0)
    routes = {}
    for spec in _parameter_layers(model)[0]:
        routes.setdefault(_conv_route(spec, STEPS), set()).add(spec.layer.name)
    shifted_gram = {f"stage{s}_block{b}_{c}_conv" for s, b, c in (
        (2, 1, 2), (2, 2, 1), (2, 2, 2), (2, 3, 1), (2, 3, 2), (3, 1, 2), (3, 2, 1), (3, 2, 2))}
    grouped = {"stem_conv"} | {f"stage1_block{b}_{c}_conv" for b in (1, 2, 3) for c in (1, 2)}
    assert routes["shifted_gram"] == shifted_gram
    patches = {"stage2_block1_1_conv", "stage3_block1_1_conv"}
    if grouped_kernels:
        assert routes["grouped"] == grouped and routes["patches"] == patches
    else:
        assert "grouped" not in routes and routes["patches"] == patches
        assert routes["patches_per_t"] == grouped
    rng = np.random.default_rng(2)
    images = rng.random((3, 8, 8, 1), dtype=np.float32)
    labels = rng.integers(0, 5, 3).astype(np.int32)
    result, _ = assert_matches_brute_force(model, images, labels, batch_size=3)
    assert result.conv_routes == {route: len(names) for route, names in routes.items()
                                  if route is not None}


def test_the_grouped_kernel_probe_tells_whether_the_estimator_can_use_it():
    """The probe's answer against the grouped backward-filter convolution itself, at the size
    of a real layer: it runs, and then agrees with the image patches' route, exactly where the
    probe says it can."""
    layer = keras.layers.Conv2D(6, 3, padding="same", use_bias=False)
    layer.build((None, 7, 7, 5))
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(4, 2, 7, 7, 5)).astype(np.float32)   # 4 samples, 2 frames
    delta = rng.normal(size=(4, 2, 7, 7, 6)).astype(np.float32)
    per_sample = tf.matmul(_patches(layer, inputs), delta.reshape(4, -1, 6), transpose_a=True)
    expected = float(tf.reduce_sum(tf.square(per_sample)))
    try:
        got = float(tf.function(_conv_sq_norm)(layer, _samples_as_channels(inputs),
                                               _samples_as_channels(delta)))
    except tf.errors.InvalidArgumentError:
        assert not grouped_filter_gradient("float32")
        return
    assert grouped_filter_gradient("float32")
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kernel_size, padding", [(3, "same"), (3, "valid"), ((2, 3), "same")])
def test_shifted_gram_is_the_gram_matrix_of_the_image_patches(kernel_size, padding):
    layer = keras.layers.Conv2D(4, kernel_size, padding=padding)
    layer.build((None, 5, 6, 3))
    images = np.random.default_rng(0).normal(size=(2, 2, 5, 6, 3)).astype(np.float32)
    patches = tf.image.extract_patches(images.reshape(4, 5, 6, 3), [1, *layer.kernel_size, 1],
                                       [1, 1, 1, 1], [1, 1, 1, 1], padding.upper())
    patches = tf.reshape(patches, [2, -1, patches.shape[-1]])  # [samples, frames x pixels, ...]
    np.testing.assert_allclose(_shifted_gram(layer, images),
                               tf.matmul(patches, patches, transpose_b=True), rtol=1e-5,
                               atol=1e-5)


def test_information_centroid_hand_cases():
    assert information_centroid([5.0, 0, 0, 0]) == 1.0
    assert information_centroid([2.0] * 6) == pytest.approx(3.5)
    assert information_centroid([0, 0, 1.0]) == 3.0
    assert information_centroid([1.0, 3.0]) == pytest.approx(1.75)
    assert np.isnan(information_centroid([0.0, 0.0, 0.0]))  # no information: undefined
    with pytest.raises(ValueError, match="non-negative"):
        information_centroid([1.0, -1.0])


def test_bad_input_is_refused(setup):
    model, images, labels = setup
    with pytest.raises(UserError, match="at least 2 timesteps"):
        temporal_fisher(with_timesteps(model, 1), (images, labels), 2)
    with pytest.raises(UserError, match="exceeds the 8 samples"):
        temporal_fisher(model, (images, labels), 9)
    with pytest.raises(UserError, match="no samples"):
        temporal_fisher(model, (images[:0], labels[:0]), 1)
    with pytest.raises(UserError, match="empty dataset"):
        temporal_fisher(model, tf.data.Dataset.from_tensor_slices((images, labels)).take(0)
                        .batch(2), 1)
    with pytest.raises(UserError, match="labels must be one of"):
        temporal_fisher(model, (images, labels), 2, labels="true")
    with pytest.raises(UserError, match="bn_statistics must be one of"):
        temporal_fisher(model, (images, labels), 2, bn_statistics="train")
