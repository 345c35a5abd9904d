"""The exact Fisher estimator with batch statistics and per-timestep batch-norm, and the
reference code's batch-mean approximation (tests/test_fisher.py: the estimator itself)."""
import keras
import numpy as np
import pytest

from fisher_reference import (STEPS, active_model, active_setup, assert_matches_brute_force,
                              batch_statistics_twin, brute_force, reference_batch_mean)
from tic_tf.fisher import temporal_fisher
from tic_tf.models import with_timesteps

# Values that depend on the kernel library: the suite runs these with oneDNN on and off.
pytestmark = pytest.mark.numerical


@pytest.fixture(scope="module")
def setup():
    return active_setup()


def test_batch_mean_approximation_is_the_reference_formula(setup):
    model, images, labels = setup
    result = temporal_fisher(model, (images, labels), 8, method="batch_mean", batch_size=4)
    np.testing.assert_allclose(result.values,
                               reference_batch_mean(model, images, labels, 4, training=False),
                               rtol=1e-4)


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
