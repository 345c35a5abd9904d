"""Batch-norm modes against independent computations: Keras' BatchNormalization per timestep."""
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, run_tool
from tic_tf import checkpoints
from tic_tf.models import TemporalBatchNorm, build_model
from tic_tf.models.layers import TimeFolded

# Values that depend on the kernel library: the suite runs these with oneDNN on and off.
pytestmark = pytest.mark.numerical

MOMENTUM, EPSILON = 0.9, 1e-5


def spike_features(shape, seed=0):
    """Features `[batch, T, ..., C]` whose statistics differ per timestep, as spikes' do."""
    rng = np.random.default_rng(seed)
    steps = shape[1]
    scale = np.linspace(0.5, 2.0, steps).reshape([1, steps] + [1] * (len(shape) - 2))
    return (rng.normal(size=shape) * scale + scale).astype(np.float32)


def randomised(layer, seed=1):
    """Give `layer` non-trivial gamma, beta and moving statistics."""
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32) if i != 1 else
                       rng.normal(size=w.shape).astype(np.float32)
                       for i, w in enumerate(layer.get_weights())])
    return layer


def keras_bn(weights, rank):
    """A Keras BatchNormalization for one timestep's `[batch, ..., C]` of rank `rank`."""
    layer = keras.layers.BatchNormalization(momentum=MOMENTUM, epsilon=EPSILON)
    layer.build((None,) * (rank - 1) + (weights[0].shape[-1],))
    layer.set_weights(weights)
    return layer


@pytest.mark.parametrize("shape", [(4, 3, 8, 8, 16), (4, 3, 7, 7, 8), (6, 4, 12)])
def test_per_timestep_training_equals_keras_batch_norm_per_timestep_in_time_order(shape):
    x = spike_features(shape)
    ours = TemporalBatchNorm("per_timestep", momentum=MOMENTUM, epsilon=EPSILON)
    ours.build(shape)
    randomised(ours)
    reference = keras_bn(ours.get_weights(), len(shape) - 1)
    outputs = ours(x, training=True).numpy()
    for t in range(shape[1]):  # T successive calls, as the reference loop makes them
        expected = reference(x[:, t], training=True).numpy()
        np.testing.assert_allclose(outputs[:, t], expected, rtol=1e-5, atol=1e-5)
    for ours_w, ref_w in zip(ours.get_weights()[2:], reference.get_weights()[2:]):
        np.testing.assert_allclose(ours_w, ref_w, rtol=1e-6, atol=1e-6)


def per_timestep_weights(layer, t):
    """gamma, beta, moving mean and variance of timestep t (scale and offset per timestep for
    "bntt", shared otherwise)."""
    gamma, beta, mean, variance = layer.get_weights()
    if layer.mode == "bntt":
        gamma, beta = gamma[t], beta[t]
    return [gamma, beta, mean[t], variance[t]]


@pytest.mark.parametrize("mode", ["time_specific", "bntt"])
@pytest.mark.parametrize("shape", [(4, 3, 8, 8, 16), (6, 4, 12)])
def test_time_specific_equals_one_keras_batch_norm_per_timestep(shape, mode):
    x = spike_features(shape)
    ours = TemporalBatchNorm(mode, timesteps=shape[1], momentum=MOMENTUM, epsilon=EPSILON)
    ours.build(shape)
    randomised(ours)
    references = [keras_bn(per_timestep_weights(ours, t), len(shape) - 1)
                  for t in range(shape[1])]
    inference = ours(x, training=False).numpy()
    for t, reference in enumerate(references):
        np.testing.assert_allclose(inference[:, t], reference(x[:, t], training=False).numpy(),
                                   rtol=1e-5, atol=1e-5)
    training = ours(x, training=True).numpy()
    for t, reference in enumerate(references):
        np.testing.assert_allclose(training[:, t], reference(x[:, t], training=True).numpy(),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ours.moving_mean.numpy()[t], reference.moving_mean.numpy(),
                                   rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ours.moving_variance.numpy()[t],
                                   reference.moving_variance.numpy(), rtol=1e-6, atol=1e-6)


def gradients(layer, x, weights, variables, training=True):
    """d/d(x, variables) of sum(layer(x, training=training) * weights)."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.cast(layer(x, training=training), tf.float32) * weights)
    return [tf.convert_to_tensor(g) for g in tape.gradient(loss, [x, *variables])]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("mode", ["per_timestep", "time_specific", "bntt"])
@pytest.mark.parametrize("shape", [(4, 3, 8, 8, 16), (6, 4, 12)])
def test_gradients_equal_keras_batch_norm_per_timestep(shape, mode, training):
    """The written-out backward passes against autodiff through Keras' batch-norm, one call
    per timestep, in training and in inference (as attacks and the Fisher estimator
    differentiate): input, scale and offset gradients (summed over time where shared)."""
    x = spike_features(shape)
    weights = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    ours = TemporalBatchNorm(mode, timesteps=shape[1], momentum=MOMENTUM, epsilon=EPSILON)
    ours.build(shape)
    randomised(ours)
    d_x, d_gamma, d_beta = gradients(ours, x, weights, [ours.gamma, ours.beta], training)
    expected = []
    for t in range(shape[1]):
        reference = keras_bn(ours.get_weights() if mode == "per_timestep"
                             else per_timestep_weights(ours, t), len(shape) - 1)
        expected.append(gradients(reference, x[:, t], weights[:, t],
                                  [reference.gamma, reference.beta], training))
    np.testing.assert_allclose(d_x, np.stack([e[0] for e in expected], 1), rtol=1e-4,
                               atol=1e-5)
    for ours_d, index in ((d_gamma, 1), (d_beta, 2)):
        per_t = np.stack([e[index] for e in expected])
        np.testing.assert_allclose(ours_d, per_t if mode == "bntt" else per_t.sum(0),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["time_specific", "bntt"])
def test_time_specific_beyond_its_timesteps_reuses_the_last_and_refuses_to_train(mode):
    trained_steps = spike_features((4, 2, 5, 5, 6))
    ours = TemporalBatchNorm(mode, timesteps=2)
    ours.build(trained_steps.shape)
    randomised(ours)
    longer = spike_features((4, 4, 5, 5, 6), seed=3)
    outputs = ours(longer, training=False).numpy()
    last = keras_bn(per_timestep_weights(ours, 1), 4)
    for t in (1, 2, 3):
        np.testing.assert_allclose(outputs[:, t], last(longer[:, t]).numpy(), rtol=1e-5,
                                   atol=1e-5)
    with pytest.raises(ValueError, match="keeps statistics for 2 timesteps"):
        ours(longer, training=True)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="batch_norm must be one of per_timestep, shared, "
                                         "time_specific, bntt"):
        build_model("resnet19", 10, 2, (32, 32, 3), width=1 / 16, batch_norm="tdbn")


@pytest.mark.parametrize("shape", [(32, 32, 3), (28, 28, 1)])
def test_per_timestep_and_shared_models_agree_in_inference(shape):
    per_timestep = build_model("resnet19", 10, 3, shape, width=1 / 16)
    shared = build_model("resnet19", 10, 3, shape, width=1 / 16, batch_norm="shared")
    assert any(isinstance(layer, TemporalBatchNorm) for layer in per_timestep.layers)
    assert not any(isinstance(layer, TemporalBatchNorm) for layer in shared.layers)
    for layer in per_timestep.layers:  # moving statistics away from their initial values
        if isinstance(layer, TemporalBatchNorm):
            randomised(layer)
    shared.set_weights(per_timestep.get_weights())
    images = np.random.default_rng(0).random((4, *shape), dtype=np.float32)
    np.testing.assert_allclose(per_timestep(images).numpy(), shared(images).numpy(),
                               rtol=1e-5, atol=1e-5)


def test_per_timestep_under_bfloat16_matches_keras_batch_norm_under_bfloat16():
    shape = (4, 3, 8, 8, 16)
    x = spike_features(shape)
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        ours = TemporalBatchNorm("per_timestep", momentum=MOMENTUM, epsilon=EPSILON)
        ours.build(shape)
        reference = keras_bn(ours.get_weights(), len(shape) - 1)
        outputs = ours(x, training=True)
        assert outputs.dtype == "bfloat16" and ours.moving_mean.dtype == "float32"
        for t in range(shape[1]):
            np.testing.assert_allclose(np.float32(outputs[:, t]),
                                       np.float32(reference(x[:, t], training=True)),
                                       rtol=1e-2, atol=1e-2)
        np.testing.assert_allclose(ours.moving_mean.numpy(), reference.moving_mean.numpy(),
                                   rtol=1e-5, atol=1e-5)
    finally:
        keras.mixed_precision.set_global_policy(policy)


TWO_REPLICAS = """
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tic_tf.models import TemporalBatchNorm

x = np.random.default_rng(0).normal(size=(8, 3, 5, 5, 4)).astype(np.float32)
x *= np.arange(1, 4, dtype=np.float32).reshape(1, 3, 1, 1, 1)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    synced = TemporalBatchNorm("per_timestep", synchronized=True)
    synced.build(x.shape)
halves = strategy.experimental_distribute_values_from_function(
    lambda context: x[4 * context.replica_id_in_sync_group:][:4])
weights = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
weight_halves = strategy.experimental_distribute_values_from_function(
    lambda context: weights[4 * context.replica_id_in_sync_group:][:4])


def step(h, w):
    with tf.GradientTape() as tape:
        tape.watch(h)
        outputs = synced(h, training=True)
        loss = tf.reduce_sum(outputs * w)
    return outputs, tape.gradient(loss, [h, synced.gamma])


outputs, (d_x, d_gamma) = strategy.run(tf.function(step), args=(halves, weight_halves))
local = strategy.experimental_local_results
outputs = np.concatenate([o.numpy() for o in local(outputs)])
d_x = np.concatenate([d.numpy() for d in local(d_x)])
d_gamma = sum(d.numpy() for d in local(d_gamma))  # as the optimizer's all-reduce sums them
single = TemporalBatchNorm("per_timestep")
expected = single(x, training=True).numpy()
variance_error = np.max(np.abs(synced.moving_variance.numpy() - single.moving_variance.numpy()))
x = tf.constant(x)
with tf.GradientTape() as tape:
    tape.watch(x)
    loss = tf.reduce_sum(single(x, training=True) * weights)
expected_d_x, expected_d_gamma = tape.gradient(loss, [x, single.gamma])
print(float(np.max(np.abs(outputs - expected))), float(variance_error),
      float(np.max(np.abs(d_x - expected_d_x))),
      float(np.max(np.abs(d_gamma - expected_d_gamma)) / np.max(np.abs(expected_d_gamma))))
"""


def test_per_timestep_statistics_and_gradients_are_those_of_the_global_batch_on_two_replicas():
    result = subprocess.run([sys.executable, "-c", TWO_REPLICAS], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # Outputs, variance and input gradients are of order one: absolute errors. The scale's
    # gradient sums over every element (about 50 here), and the replicas sum it in another
    # order than one device: its error relative to its size, which is a few float32 ulps.
    errors = list(map(float, result.stdout.split()[-4:]))
    assert max(errors) < 1e-5, errors


def test_shared_mode_keeps_the_layout_of_earlier_checkpoints():
    model = build_model("resnet19", 10, 2, (32, 32, 3), width=1 / 16, batch_norm="shared")
    wrapped = [layer for layer in model.layers if isinstance(layer, TimeFolded)
               and isinstance(layer.layer, keras.layers.BatchNormalization)]
    assert [layer.name for layer in wrapped][:2] == ["stage1_block1_1_bn_t",
                                                     "stage1_block1_2_bn_t"]


def test_per_timestep_statistics_carry_spikes_to_the_deepest_layer_at_t1_where_shared_do_not():
    from tic_tf.diagnostics import TimestepProbe

    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).random((32, 28, 28, 1), dtype=np.float32)
    labels = np.zeros(32, np.int32)
    per_timestep = build_model("resnet19", 10, 4, (28, 28, 1), width=1 / 16)
    shared = build_model("resnet19", 10, 4, (28, 28, 1), width=1 / 16, batch_norm="shared")
    shared.set_weights(per_timestep.get_weights())
    deepest = "stage3_block2_lif2"
    rates = {name: TimestepProbe(model)(images, labels, bn_statistics="batch").firing[deepest]
             for name, model in (("per_timestep", per_timestep), ("shared", shared))}
    # Training mode, same weights: the sparse first timestep normalised with its own statistics
    # keeps firing through the network (about 4% here); scaled by statistics pooled with the
    # denser later timesteps it dies out with depth.
    assert rates["per_timestep"][0] > 0.02
    assert rates["shared"][0] == 0.0 and rates["shared"][-1] > 0.02


@pytest.mark.parametrize("mode", ["time_specific", "bntt"])
def test_time_specific_models_checkpoint_and_export_at_another_timestep_count(mode, tmp_path):
    """Checkpoint -> `python -m tic_tf.export --timesteps=3` of a model built for T=2: the
    SavedModel equals the Keras model at T=3, whose first two timesteps are those of the T=2
    model (the network is causal) and whose third reuses timestep 2's statistics."""
    config = dict(arch="alexnet", num_classes=10, timesteps=2, input_shape=[8, 8, 1],
                  width=1 / 16, batch_norm=mode)
    model = build_model(**config)
    for layer in model.layers:
        if isinstance(layer, TemporalBatchNorm):
            randomised(layer)
    path = checkpoints.write(str(tmp_path / "epoch-0001"), model, config)
    result = run_tool("export", f"--checkpoint={path}", f"--output={tmp_path / 'served'}",
                      "--timesteps=3")
    assert result.returncode == 0, result.stderr
    images = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
    served = tf.saved_model.load(str(tmp_path / "served")).signatures["serving_default"]
    logits = served(images=tf.constant(images))["logits_per_timestep"].numpy()
    np.testing.assert_allclose(logits, checkpoints.load_model(path, timesteps=3)[0](images),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits[:, :2], model(images), rtol=1e-5, atol=1e-5)
