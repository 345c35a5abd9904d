import copy

import keras
import numpy as np
import pytest
import tensorflow as tf

from tic_tf.errors import UserError
from tic_tf.fisher import (_conv_route, _conv_sq_norm, _parameter_layers, _patches,
                           _samples_as_channels, _shifted_gram, block_of, gumbel_noise,
                           information_centroid, sample_model_labels, temporal_fisher)
from tic_tf.kernels import grouped_filter_gradient
from tic_tf.losses import per_timestep_losses
from tic_tf.models import TemporalBatchNorm, build_model, set_precision, with_timesteps

# Values that depend on the kernel library: the suite runs these with oneDNN on and off.
pytestmark = pytest.mark.numerical

STEPS = 3


def active_model(arch="resnet19", shape=(28, 28, 1), seed=0, batch_norm="per_timestep",
                 **neuron):
    """A tiny model whose layers fire, with non-trivial batch-norm statistics (`neuron`:
    build_model's neuron arguments)."""
    tf.keras.utils.set_random_seed(seed)
    model = build_model(arch, 5, STEPS, shape, width=1 / 16, batch_norm=batch_norm, **neuron)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if isinstance(inner, (tf.keras.layers.BatchNormalization, TemporalBatchNorm)):
            size, stats = inner.gamma.shape, inner.moving_mean.shape
            inner.gamma.assign(rng.uniform(0.5, 1.5, size).astype("float32"))
            inner.beta.assign(rng.uniform(0.2, 0.8, size).astype("float32"))
            inner.moving_mean.assign(rng.normal(0, 0.1, stats).astype("float32"))
            inner.moving_variance.assign(rng.uniform(0.5, 2, stats).astype("float32"))
        if inner.name == "classifier":
            inner.bias.assign(rng.normal(0, 0.1, inner.bias.shape).astype("float32"))
    return model


def brute_force(model, images, labels, blocks=None):
    """One GradientTape per sample and per t, over all (or one block's) parameters."""
    steps = model.output.shape[1]
    variables = [(v, block_of(v.path.split("/")[-2])) for v in model.trainable_variables]
    labels = labels if labels.ndim == 2 else np.repeat(labels[:, None], steps, axis=1)

    @tf.function  # eager Conv2DBackpropFilter on a batch of one crashes oneDNN in TF 2.21
    def sample_gradient(image, label, t):
        with tf.GradientTape() as tape:
            loss = per_timestep_losses(model(image, training=False), label)[0, t]
        return tape.gradient(loss, [v for v, _ in variables])

    values = np.zeros(steps)
    per_block = {}
    for n in range(len(images)):
        for t in range(steps):
            grads = sample_gradient(images[n:n + 1], labels[n:n + 1], tf.constant(t))
            for (v, block), g in zip(variables, grads):
                sq = float(tf.reduce_sum(tf.square(g))) if g is not None else 0.0
                values[t] += sq
                per_block.setdefault(block, np.zeros(steps))[t] += sq
    return values / len(images), {k: v / len(images) for k, v in per_block.items()}


def assert_matches_brute_force(model, images, labels, batch_size):
    """temporal_fisher's I_t and I_t per block against `brute_force`; returns its result and
    the brute-force I_t."""
    result = temporal_fisher(model, (images, labels), len(images), per_layer=True,
                             batch_size=batch_size)
    expected, expected_blocks = brute_force(model, images, labels)
    np.testing.assert_allclose(result.values, expected, rtol=1e-4)
    assert set(result.per_layer) == set(expected_blocks)
    for block, values in expected_blocks.items():
        np.testing.assert_allclose(result.per_layer[block], values, rtol=1e-4, atol=1e-9)
    return result, expected


@pytest.fixture(scope="module")
def setup():
    model = active_model()
    rng = np.random.default_rng(1)
    images = rng.random((8, 28, 28, 1), dtype=np.float32)
    labels = rng.integers(0, 5, 8).astype(np.int32)
    return model, images, labels


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
    rng = np.random.default_rng(2)
    images = rng.random((3, 32, 32, 3), dtype=np.float32)
    labels = rng.integers(0, 5, 3).astype(np.int32)
    for arch in ("alexnet", "vgg16"):
        model = active_model(arch, (32, 32, 3))
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


def reference_batch_mean(model, images, labels, batch_size, training):
    """The reference code's formula: per batch and t, the squared norm of the gradient of the
    batch-mean L_t, with batch-norm in inference or training mode, summed over batches."""
    expected = np.zeros(STEPS)
    for start in range(0, len(images), batch_size):
        for t in range(STEPS):
            with tf.GradientTape() as tape:
                losses = per_timestep_losses(
                    model(images[start:start + batch_size], training=training),
                    labels[start:start + batch_size])
                loss = tf.reduce_mean(losses[:, t])
            expected[t] += sum(float(tf.reduce_sum(g ** 2))
                               for g in tape.gradient(loss, model.trainable_variables))
    return expected


def test_batch_mean_approximation_is_the_reference_formula(setup):
    model, images, labels = setup
    result = temporal_fisher(model, (images, labels), 8, method="batch_mean", batch_size=4)
    np.testing.assert_allclose(result.values,
                               reference_batch_mean(model, images, labels, 4, training=False),
                               rtol=1e-4)


def batch_statistics_twin(model, images):
    """`model` with every batch-norm's moving statistics set to the batch moments of `images`
    (per timestep where `model` normalises per timestep in training), by Keras' own
    training-mode layers at momentum 0: in inference mode it normalises every sample exactly
    as `model` does with batch statistics held constant."""
    config = copy.deepcopy(model.get_config())

    def calibrating(node):  # every layer config, TimeFolded's inner one included
        if isinstance(node, dict):
            if node.get("class_name") == "BatchNormalization":
                node["config"]["momentum"] = 0.0
            if node.get("class_name") == "TemporalBatchNorm":
                if node["config"]["mode"] == "per_timestep":
                    node["config"].update(mode="time_specific", timesteps=STEPS)
                node["config"]["momentum"] = 0.0
            for value in node.values():
                calibrating(value)
        elif isinstance(node, list):
            for value in node:
                calibrating(value)
    calibrating(config)
    twin = keras.Model.from_config(config)
    for ours, theirs in zip(twin.layers, model.layers):
        if isinstance(ours, TemporalBatchNorm):  # statistics maybe of another shape: set next
            ours.gamma.assign(theirs.gamma)
            ours.beta.assign(theirs.beta)
        else:
            ours.set_weights(theirs.get_weights())
    twin(images, training=True)
    return twin


@pytest.mark.parametrize("batch_norm", ["per_timestep", "shared", "time_specific", "bntt"])
def test_exact_fisher_with_batch_statistics_matches_brute_force_on_a_calibrated_twin(
        batch_norm):
    model = active_model(batch_norm=batch_norm, seed=3)
    rng = np.random.default_rng(3)
    images = rng.random((5, 28, 28, 1), dtype=np.float32)
    labels = rng.integers(0, 5, 5).astype(np.int32)
    before = [v.numpy() for v in model.variables]
    result = temporal_fisher(model, (images, labels), 5, batch_size=5, bn_statistics="batch")
    expected, _ = brute_force(batch_statistics_twin(model, images), images, labels)
    np.testing.assert_allclose(result.values, expected, rtol=1e-4)
    moving = temporal_fisher(model, (images, labels), 5, batch_size=5)
    assert np.abs(moving.values - expected).max() > 1e-2 * expected.max()  # a real difference
    for variable, value in zip(model.variables, before):  # moving statistics included
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)
    assert result.to_json()["bn_statistics"] == "batch"


def test_exact_fisher_with_per_timestep_scale_and_offset_run_beyond_its_timesteps():
    """bntt: every timestep has its own scale and offset; the last one's also act on the
    timesteps beyond those the model was built with. At T=5 the estimator's forward runs in
    chunks of two timesteps (the last one shorter)."""
    model = with_timesteps(active_model(batch_norm="bntt", seed=4), STEPS + 2)
    rng = np.random.default_rng(4)
    images = rng.random((4, 28, 28, 1), dtype=np.float32)
    labels = rng.integers(0, 5, 4).astype(np.int32)
    assert_matches_brute_force(model, images, labels, batch_size=4)


def test_batch_mean_with_batch_statistics_is_the_training_mode_formula(setup):
    model, images, labels = setup
    before = [v.numpy() for v in model.variables]
    result = temporal_fisher(model, (images, labels), 8, method="batch_mean", batch_size=4,
                             bn_statistics="batch")
    for variable, value in zip(model.variables, before):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)
    trained = keras.Model.from_config(model.get_config())  # training mode updates its copy
    trained.set_weights(model.get_weights())
    np.testing.assert_allclose(result.values,
                               reference_batch_mean(trained, images, labels, 4, training=True),
                               rtol=1e-4)


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
