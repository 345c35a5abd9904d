import keras
import numpy as np
import pytest
import tensorflow as tf

from tic_tf import checkpoints, cli
from tic_tf.losses import MeanLogitCrossEntropy, accuracy_metric
from tic_tf.models import (FoldedBatchNorm, TemporalBatchNorm, build_model, fold_batch_norm,
                           lif_layers, set_precision, timesteps_of, with_timesteps)
from tic_tf.models.stepwise import run_timesteps
from tic_tf.training import TrainConfig, model_config, run_settings


def trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def test_resnet19_has_reference_parameter_count():
    assert trainable_count(build_model("resnet19", 10, 2, (32, 32, 3))) == 26_108_042


def test_resnet19_quarter_width_matches_reference_design():
    assert trainable_count(build_model("resnet19", 10, 2, (32, 32, 3), width=0.25)) == 1_636_394


@pytest.mark.parametrize("arch", ["resnet19", "resnet34", "vgg16", "alexnet"])
@pytest.mark.parametrize("shape", [(32, 32, 3), (28, 28, 1), (8, 8, 1)])
def test_output_is_per_timestep_logits(arch, shape):
    model = build_model(arch, 7, 3, shape, width=1 / 16)
    out = model(np.random.rand(2, *shape).astype("float32"))
    assert out.shape == (2, 3, 7)
    assert len(lif_layers(model)) >= 5


def test_same_weights_run_at_any_number_of_timesteps():
    model = build_model("resnet19", 10, 2, (32, 32, 3), width=1 / 16)
    for layer in model.layers:  # BN offsets of 0.6 make every layer fire at initialisation
        if "_bn" in layer.name:
            layer.weights[1].assign(tf.fill(layer.weights[1].shape, 0.6))
    longer = with_timesteps(model, 6)
    assert timesteps_of(longer) == 6
    fresh = build_model("resnet19", 10, 6, (32, 32, 3), width=1 / 16)
    fresh.set_weights(model.get_weights())
    x = np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)
    short_out, long_out = model(x).numpy(), longer(x).numpy()
    np.testing.assert_allclose(long_out, fresh(x).numpy(), atol=1e-5)
    # A spiking network is causal: the first two timesteps cannot depend on later ones.
    np.testing.assert_allclose(long_out[:, :2], short_out, atol=1e-5)
    assert np.abs(long_out[:, 2:] - long_out[:, 1:2]).max() > 1e-3  # later steps differ


def firing_model(arch, batch_norm, timesteps=3, shape=(28, 28, 1)):
    """A tiny model whose layers fire, with batch-norm statistics (and for "bntt" scales and
    offsets) that differ between timesteps."""
    keras.utils.set_random_seed(0)
    model = build_model(arch, 5, timesteps, shape, width=1 / 16, batch_norm=batch_norm)
    rng = np.random.default_rng(1)
    for variable in model.weights:
        draws = {"moving_variance": rng.uniform(0.01, 0.1, variable.shape),
                 "moving_mean": rng.normal(0, 0.1, variable.shape),
                 "gamma": rng.uniform(0.5, 1.5, variable.shape),
                 "beta": rng.normal(0.5, 0.5, variable.shape)}
        name = variable.path.split("/")[-1]
        if name in draws:
            variable.assign(draws[name])
    return model


@pytest.mark.numerical
@pytest.mark.parametrize("arch, batch_norm, beyond, chunk", [
    ("resnet19", "per_timestep", False, 1), ("resnet19", "shared", False, 2),
    ("resnet19", "time_specific", True, 2), ("vgg16", "bntt", True, 1),
    ("alexnet", "bntt", True, 2)])
def test_run_timesteps_computes_the_model_a_chunk_of_timesteps_at_a_time(arch, batch_norm,
                                                                          beyond, chunk):
    model = firing_model(arch, batch_norm)
    if beyond:  # per-timestep statistics beyond the kept ones: the last one's
        model = with_timesteps(model, 5)
    images = np.random.default_rng(2).random((4, 28, 28, 1), dtype=np.float32)
    expected = model(images, training=False).numpy()
    logits, records = run_timesteps(model, tf.constant(images), chunk=chunk,
                                    record=[model.get_layer("stem_conv"),
                                            lif_layers(model)[-1]])
    lengths = [min(chunk, timesteps_of(model) - first)
               for first in range(0, timesteps_of(model), chunk)]
    assert [l.shape for l in logits] == [(4, length, 5) for length in lengths]
    # A chunk's convolutions run over a batch of another size than the whole run's, and the
    # kernels (oneDNN's on AVX2, say) may then sum in another order: logits agree to a few
    # float32 ulps (1.1e-6 relative seen), not bit for bit. Spikes, thresholded, agree exactly.
    np.testing.assert_allclose(np.concatenate(logits, 1), expected, rtol=1e-5, atol=1e-6)
    assert np.abs(expected[:, 0] - expected[:, -1]).max() > 0.1  # timesteps differ
    # The stem runs once; each chunk's spikes are the layer's output at its timesteps.
    assert all(steps[0][1] is records[0][0][1] for steps in records)
    spikes = keras.Model(model.input, lif_layers(model)[-1].output)(images).numpy()
    np.testing.assert_array_equal(np.concatenate([steps[1][1] for steps in records], 1), spikes)


def batch_norms(model):
    """The model's batch-norm layers, time-folded Keras ones included."""
    return [layer for layer in model.layers
            if isinstance(getattr(layer, "layer", layer),
                          (TemporalBatchNorm, keras.layers.BatchNormalization))]


@pytest.mark.numerical
@pytest.mark.parametrize("arch, batch_norm", [
    ("resnet19", "per_timestep"), ("resnet19", "shared"), ("vgg16", "per_timestep"),
    ("alexnet", "time_specific")])
def test_folding_batch_norm_keeps_spikes_and_logits(arch, batch_norm):
    """Every batch-norm with one affine for all timesteps folded into the layer before it (a
    convolution, or for VGG16's and AlexNet's hidden layers a dense one); time-specific ones
    stay, the stem's alone folded. Same spikes in the last LIF layer and the same logits (to
    float rounding) as the model in inference."""
    model = firing_model(arch, batch_norm)
    fast = fold_batch_norm(model)
    norms = batch_norms(model)
    kept = [layer.name for layer in norms if getattr(layer, "mode", "") == "time_specific"]
    assert [layer.name for layer in batch_norms(fast)] == kept
    assert (sorted(layer.name for layer in fast.layers if isinstance(layer, FoldedBatchNorm))
            == sorted(layer.name for layer in norms if layer.name not in kept))
    assert len(kept) == (len(norms) - 1 if batch_norm == "time_specific" else 0)
    images = np.random.default_rng(2).random((4, 28, 28, 1), dtype=np.float32)
    last_spikes = [keras.Model(m.input, lif_layers(m)[-1].output)(images).numpy()
                   for m in (model, fast)]
    np.testing.assert_array_equal(*last_spikes)
    assert 0.05 < last_spikes[0].mean() < 0.95  # the layers fire, not all or nothing
    np.testing.assert_allclose(fast(images).numpy(), model(images, training=False).numpy(),
                               rtol=1e-5, atol=1e-5)


def test_normalisation_inside_model_uses_dataset_statistics():
    model = build_model("alexnet", 10, 2, (28, 28, 1), width=1 / 16, mean=[0.5], std=[0.25])
    normalize = model.get_layer("normalize")
    x = np.full((1, 28, 28, 1), 0.75, np.float32)
    np.testing.assert_allclose(normalize(x).numpy(), 1.0, rtol=1e-5)


def test_keras_save_load_round_trip(tmp_path):
    model = build_model("vgg16", 10, 2, (32, 32, 3), width=1 / 16, tau=0.75)
    x = np.random.rand(2, 32, 32, 3).astype("float32")
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6)
    assert lif_layers(loaded)[0].cell.tau == 0.75


def test_neuron_options_go_from_the_command_line_into_the_checkpoint(tmp_path):
    config = cli.parse(TrainConfig, ["--arch=alexnet", "--width=0.0625", "--timesteps=2",
                                     "--neuron=if", "--reset=soft", "--surrogate=triangle"])
    arguments = model_config(config, config.data.spec)
    model = build_model(**arguments)
    path = str(tmp_path / "epoch-0001")
    checkpoints.write(path, model, arguments)
    loaded, _ = checkpoints.load_model(path)
    assert {(cell.neuron, cell.reset, cell.surrogate, cell.surrogate_sharpness)
            for cell in (layer.cell for layer in lif_layers(loaded))} == {
        ("if", "soft", "triangle", 1.0)}  # the triangle's default sharpness
    assert run_settings(config)["surrogate_sharpness"] == 1.0
    images = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
    np.testing.assert_array_equal(loaded(images).numpy(), model(images).numpy())


@pytest.mark.parametrize("kwargs, message", [
    (dict(arch="resnet50"), "Unknown architecture"),
    (dict(timesteps=0), "timesteps must be a positive"),
    (dict(width=0.0), "width must be positive"),
    (dict(tau=0.5), "tau must be > 0.5"),
    (dict(input_shape=(0, 32, 3)), r"input_shape must be \(height, width, channels\)"),
    (dict(input_shape=(32, 32)), r"input_shape must be \(height, width, channels\)"),
])
def test_bad_arguments_are_refused(kwargs, message):
    args = dict(arch="alexnet", num_classes=10, timesteps=2, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match=message):
        build_model(**{**args, **kwargs})


@pytest.mark.parametrize("arch, shape, pooled", [
    ("resnet19", (64, 64, 3), (8, 8)),  # three stride-2 stages
    ("resnet34", (48, 48, 2), (6, 6)),
    ("vgg16", (48, 40, 2), (2, 2)),  # five pools: 48 -> 24 -> 12 -> 6 -> 3 -> 2, 40 -> ... -> 2
    ("alexnet", (20, 12, 5), (3, 2)),  # three pools: 20 -> 10 -> 5 -> 3, 12 -> 6 -> 3 -> 2
])
def test_any_image_size_and_channel_count_runs_through_every_architecture(arch, shape, pooled):
    model = build_model(arch, 7, 2, shape, width=1 / 16, mean=[0.5] * shape[2],
                        std=[0.25] * shape[2])
    images = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    assert model(images).shape == (2, 2, 7)
    # The feature map reaching the global pool (ResNet) or the flatten (plain nets): each side
    # halved, rounding up, at every downsampling ("same" padding).
    pooling = model.get_layer("pool_t" if arch.startswith("resnet") else "flatten_t")
    assert tuple(pooling.input.shape[2:4]) == pooled


def test_bptt_training_learns_a_separable_task():
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 256)
    # Class 1 images are bright in the left half, class 0 in the right half.
    images = rng.random((256, 28, 28, 1), dtype=np.float32) * 0.2
    images[labels == 1, :, :14] += 0.8
    images[labels == 0, :, 14:] += 0.8
    # Shared statistics: with per-timestep ones, 6 epochs leave the inference-mode network
    # silent at early timesteps (see tests/test_batch_norm.py), which this test is not about.
    # Margin, measured for seeds 0-4 with op determinism off and on: the loss fell to 0.1-6.9%
    # of its start (asserted: 50%), accuracy 99.6-100% (asserted: 90%).
    model = build_model("resnet19", 2, 2, (28, 28, 1), width=1 / 16, batch_norm="shared")
    model.compile(keras.optimizers.Adam(1e-2), MeanLogitCrossEntropy(), metrics=[accuracy_metric()])
    before = model.evaluate(images, labels, verbose=0)[0]
    model.fit(images, labels, batch_size=32, epochs=6, verbose=0)
    loss, accuracy = model.evaluate(images, labels, verbose=0)
    assert loss < 0.5 * before
    assert accuracy > 0.9


@pytest.fixture(params=[True, False], ids=["forward_input_gradient", "tensorflows_gradient"])
def eigen_convolutions(request, monkeypatch):
    """Runs a test with convolutions' input gradients computed as on Eigen's kernels (forward
    convolutions) and as elsewhere (TensorFlow's own), whatever the machine's kernels."""
    monkeypatch.setattr("tic_tf.models.layers.eigen_convolutions", lambda: request.param)


@pytest.mark.numerical
@pytest.mark.parametrize("batch, size", [(1, 32), (5, 31)])
def test_pointwise_conv_equals_strided_conv2d_and_its_gradients(batch, size,
                                                                eigen_convolutions):
    from tic_tf.models.layers import PointwiseConv2D

    x = tf.constant(np.random.default_rng(0).random((batch, size, size, 8), dtype=np.float32))
    ours = PointwiseConv2D(16, 1, strides=2, padding="same", use_bias=False)
    reference = keras.layers.Conv2D(16, 1, strides=2, padding="same", use_bias=False)
    ours.build(x.shape)
    reference.build(x.shape)
    reference.set_weights(ours.get_weights())
    np.testing.assert_allclose(ours(x).numpy(), reference(x).numpy(), rtol=1e-6)
    with tf.GradientTape() as tape:  # odd batches crash oneDNN's own strided 1x1 gradient
        tape.watch(x)
        loss = tf.reduce_sum(tf.square(ours(x)))
    input_grad, kernel_grad = tape.gradient(loss, [x, ours.kernel])
    # By hand: out = x[:, ::2, ::2] @ K, so dL/dK = 2 x_s^T out and dL/dx = 2 out K^T at the
    # sampled pixels, zero elsewhere.
    sampled, kernel = x.numpy()[:, ::2, ::2], ours.kernel.numpy()[0, 0]
    out = sampled @ kernel
    np.testing.assert_allclose(kernel_grad.numpy()[0, 0],
                               2 * np.einsum("nhwi,nhwo->io", sampled, out), rtol=1e-4)
    expected = np.zeros(x.shape, np.float32)
    expected[:, ::2, ::2] = 2 * out @ kernel.T
    np.testing.assert_allclose(input_grad.numpy(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.numerical
@pytest.mark.parametrize("kernel_size, padding, dtype", [
    (3, "same", "float32"), (3, "valid", "float32"), ((2, 5), "same", "float32"),
    ((4, 1), "valid", "float32"), (3, "same", "bfloat16")])
def test_flipped_kernel_conv_gradients_are_tensorflows(kernel_size, padding, dtype,
                                                      monkeypatch):
    """The input gradient as a forward convolution with the flipped kernel (as on Eigen's
    kernels, forced here), against TensorFlow's backprop kernels of the same convolution."""
    from tic_tf.models.layers import FlippedKernelConv2D

    monkeypatch.setattr("tic_tf.models.layers.eigen_convolutions", lambda: True)

    x = tf.constant(np.random.default_rng(0).normal(size=(3, 7, 6, 5)).astype(np.float32))
    ours = FlippedKernelConv2D(4, kernel_size, padding=padding, dtype=dtype)
    reference = keras.layers.Conv2D(4, kernel_size, padding=padding, dtype=dtype)
    for layer in (ours, reference):
        layer.build(x.shape)
    reference.set_weights(ours.get_weights())
    results = []
    for layer in (ours, reference):
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = tf.cast(layer(x), tf.float32)
            loss = tf.reduce_sum(outputs * tf.range(outputs.shape[-1], dtype=tf.float32)
                                 * outputs)
        results.append([outputs, *tape.gradient(loss, [x, layer.kernel, layer.bias])])
    tolerance = 1e-5 if dtype == "float32" else 2e-2  # bfloat16: 8 bits of mantissa
    for got, expected in zip(*results):
        scale = float(tf.reduce_max(tf.abs(expected)))
        np.testing.assert_allclose(got.numpy() / scale, expected.numpy() / scale,
                                   atol=tolerance)


@pytest.fixture
def restore_precision():
    yield
    set_precision("none")


def test_bfloat16_computes_convolutions_and_spikes_in_16_bits_membranes_in_float32(
        restore_precision):
    set_precision("bfloat16")
    keras.utils.set_random_seed(0)
    model = build_model("resnet19", 10, 2, (32, 32, 3), width=0.0625)
    conv = model.get_layer("stage1_block1_1_conv_t")
    assert conv.compute_dtype == "bfloat16" and conv.layer.kernel.dtype == "float32"
    currents = tf.zeros((1, 2, 4, 4, 8), tf.bfloat16)
    for lif in lif_layers(model):
        spikes, membrane = lif.run_from(currents, tf.zeros((1, 4, 4, 8)))
        assert (lif.compute_dtype, spikes.dtype, membrane.dtype) == ("bfloat16", "bfloat16",
                                                                     "float32")
    images = np.random.default_rng(0).random((8, 32, 32, 3), dtype=np.float32)
    assert model(images).dtype == "float32"
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), MeanLogitCrossEntropy())
    before = model.get_layer("classifier_t").get_weights()[0].copy()
    history = model.fit(images, np.arange(8) % 10, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.allclose(model.get_layer("classifier_t").get_weights()[0], before)


def test_float16_training_steps_along_the_unscaled_gradient_of_the_scaled_loss(
        restore_precision):
    """Loss scaling: the step multiplies the loss by the scale (2^15 to start) so that float16
    gradients do not underflow, and divides the gradients by it again before SGD applies
    them: the update is -lr times the gradient of the loss itself."""
    set_precision("float16")
    keras.utils.set_random_seed(0)
    model = build_model("resnet19", 10, 2, (32, 32, 3), width=0.0625)
    model.compile(keras.optimizers.SGD(0.1), MeanLogitCrossEntropy())
    scale = float(model.optimizer.scale_loss(tf.constant(1.0)).numpy())
    assert scale == 2.0 ** 15
    images = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
    labels = np.arange(4) % 10
    kernel = model.get_layer("classifier_t").layer.kernel
    before = kernel.numpy().copy()
    with tf.GradientTape() as tape:
        loss = MeanLogitCrossEntropy()(labels, model(images, training=True))
        scaled = loss * scale
    gradient = tape.gradient(scaled, kernel).numpy() / scale
    model.train_on_batch(images, labels)
    np.testing.assert_allclose(kernel.numpy() - before, -0.1 * gradient, rtol=1e-3,
                               atol=1e-6)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of"):
        set_precision("int8")
