"""Per-timestep firing and accuracy against independent computations."""
import keras
import numpy as np
import pytest

from tic_tf.diagnostics import TimestepProbe
from tic_tf.models import build_model, lif_layers, time_specific_twin

STEPS = 3


@pytest.fixture(scope="module")
def model_and_data():
    keras.utils.set_random_seed(0)
    model = build_model("resnet19", 4, STEPS, (28, 28, 1), width=1 / 16)
    rng = np.random.default_rng(0)
    images = rng.random((24, 28, 28, 1), dtype=np.float32)
    model(images, training=True)  # moving statistics away from their initial values
    return model, images, rng.integers(0, 4, 24).astype(np.int32)


def lif_rates(currents, tau=2.0, threshold=1.0):
    """Spike rate per timestep of LIF neurons fed `currents` [T, ...] (Eq. 1, hard reset)."""
    membrane, rates = np.zeros_like(currents[0]), []
    for current in currents:
        membrane = (1 - 1 / tau) * membrane + current / tau
        spikes = membrane >= threshold
        membrane = np.where(spikes, 0.0, membrane)
        rates.append(spikes.mean())
    return np.array(rates)


def test_firing_and_accuracy_per_timestep_match_a_direct_computation(model_and_data):
    model, images, labels = model_and_data
    result = TimestepProbe(model)(images, labels, batch_size=10)  # uneven last batch
    stem = keras.Model(model.input, model.get_layer("stem_bn").output)(images).numpy()
    np.testing.assert_allclose(result.firing["stem_lif"], lif_rates([stem] * STEPS), atol=1e-6)
    logits = model(images).numpy()
    upto = np.argmax(np.cumsum(logits, axis=1), -1) == labels[:, None]
    at = np.argmax(logits, -1) == labels[:, None]
    np.testing.assert_allclose(result.accuracy_upto, upto.mean(0))
    np.testing.assert_allclose(result.accuracy_at, at.mean(0))
    assert result.to_json()["layers"] == [layer.name for layer in lif_layers(model)]


def test_batch_statistics_change_no_variable_and_match_training_mode(model_and_data):
    model, images, labels = model_and_data
    before = [v.numpy() for v in model.variables]
    result = TimestepProbe(model)(images, labels, bn_statistics="batch", batch_size=len(images))
    for variable, value in zip(model.variables, before):
        np.testing.assert_array_equal(variable.numpy(), value)
    logits = model(images, training=True).numpy()
    for variable, value in zip(model.variables, before):
        variable.assign(value)
    np.testing.assert_allclose(result.accuracy_at,
                               (np.argmax(logits, -1) == labels[:, None]).mean(0))


def test_time_specific_twin_infers_as_training_normalised_its_calibration_batch(model_and_data):
    model, images, _ = model_and_data
    # The stem's batch-norm is not per timestep: give it this batch's statistics, so that it
    # too normalises alike in both modes.
    stem = keras.Model(model.input, model.get_layer("stem_conv").output)(images)
    mean, variance = keras.ops.moments(stem, axes=[0, 1, 2])  # as BatchNormalization does
    model.get_layer("stem_bn").moving_mean.assign(mean)
    model.get_layer("stem_bn").moving_variance.assign(variance)
    twin = time_specific_twin(model, images)
    before = [v.numpy() for v in model.variables]
    training_mode = model(images, training=True).numpy()
    for variable, value in zip(model.variables, before):
        variable.assign(value)
    np.testing.assert_allclose(twin(images).numpy(), training_mode, rtol=1e-4, atol=1e-4)
    assert twin.get_layer("stage1_block1_1_bn").momentum == 0.9
    with pytest.raises(ValueError, match="batch_norm='per_timestep'"):
        time_specific_twin(twin, images)
