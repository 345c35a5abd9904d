import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tic_tf.losses import MeanLogitCrossEntropy
from tic_tf.models import build_model, lif_layers
from tic_tf.neurons import LIF, LIFCell, recompute_states, spike


def hand_lif(currents, tau, threshold=1.0):
    """Eq. 1 of the paper, one neuron, written out step by step."""
    membrane, spikes, potentials = 0.0, [], []
    for current in currents:
        membrane = (1 - 1 / tau) * membrane + current / tau
        potentials.append(membrane)
        fired = 1.0 if membrane >= threshold else 0.0
        spikes.append(fired)
        membrane = 0.0 if fired else membrane
    return spikes, potentials


@pytest.mark.parametrize("tau", [2.0, 0.75, 4.0])
def test_lif_matches_hand_computation_of_eq1(tau):
    currents = [0.8, 1.5, 2.5, -0.4, 3.0, 0.9, 1.1, 2.0]
    expected, _ = hand_lif(currents, tau)
    got = LIF(tau=tau)(tf.constant([currents], tf.float32)[..., None])
    np.testing.assert_array_equal(got.numpy()[0, :, 0], expected)
    assert sum(expected) >= 2  # the sequence exercises firing and reset


def test_negative_decay_for_tau_below_one_flips_membrane_sign():
    cell = LIFCell(tau=0.75)
    _, [membrane] = cell(tf.constant([[-0.6]]), [tf.constant([[0.3]])])
    # decay 1 - 1/0.75 = -1/3: -1/3 * 0.3 + (-0.6) / 0.75
    assert membrane.numpy()[0, 0] == pytest.approx(-0.1 - 0.8, rel=1e-6)


def test_hard_reset_sets_membrane_to_zero_after_spike():
    cell = LIFCell(tau=2.0)
    spikes, [membrane] = cell(tf.constant([[4.0, 1.0]]), [tf.zeros([1, 2])])
    np.testing.assert_array_equal(spikes.numpy(), [[1.0, 0.0]])
    np.testing.assert_allclose(membrane.numpy(), [[0.0, 0.5]])


def test_surrogate_gradient_follows_arctan_formula():
    x = tf.constant([-1.0, -0.3, 0.0, 0.2, 2.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = spike(x)
    np.testing.assert_array_equal(y.numpy(), [0, 0, 1, 1, 1])
    expected = 1.0 / (1.0 + (math.pi * x.numpy()) ** 2)
    np.testing.assert_allclose(tape.gradient(y, x).numpy(), expected, rtol=1e-6)


def hand_gradient(currents, detach, tau=2.0, threshold=1.0):
    """d(sum of spikes)/d(currents) of one neuron by reverse mode written out by hand: spikes
    H(m - threshold) with arctan surrogate derivative, reset m (1 - s) (s a constant when
    detached)."""
    surrogate = lambda x: 1.0 / (1.0 + (math.pi * x) ** 2)  # noqa: E731
    decay, membranes, spikes, kept = 1 - 1 / tau, [], [], 0.0
    for current in currents:
        membrane = decay * kept + current / tau
        fired = float(membrane >= threshold)
        membranes.append(membrane)
        spikes.append(fired)
        kept = membrane * (1 - fired)
    grads, upstream_kept = [], 0.0  # d total / d (membrane kept after step t)
    for membrane, fired in zip(reversed(membranes), reversed(spikes)):
        slope = surrogate(membrane - threshold)
        d_kept_d_membrane = (1 - fired) - (0.0 if detach else membrane * slope)
        d_membrane = slope + upstream_kept * d_kept_d_membrane
        grads.append(d_membrane / tau)
        upstream_kept = d_membrane * decay
    return grads[::-1]


@pytest.mark.parametrize("detach", [True, False])
def test_reset_gradient_matches_a_hand_derivation(detach):
    currents = [2.2, 1.0, 0.7, 2.4]  # fires at t = 1 and t = 4
    inputs = tf.constant([currents])[..., None]
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        out = LIF(detach_reset=detach)(inputs)
        total = tf.reduce_sum(out)
    np.testing.assert_array_equal(out.numpy()[0, :, 0], hand_lif(currents, 2.0)[0])
    np.testing.assert_allclose(tape.gradient(total, inputs).numpy()[0, :, 0],
                               hand_gradient(currents, detach), rtol=1e-5)


def test_bad_tau_is_refused_with_reason():
    with pytest.raises(ValueError, match="tau must be > 0.5"):
        LIFCell(tau=0.5)


def test_lif_config_round_trip():
    layer = LIF(tau=0.75, threshold=0.5, detach_reset=False, name="n")
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert (clone.cell.tau, clone.cell.threshold, clone.cell.detach_reset) == (0.75, 0.5, False)


def test_surrogate_sharpness_changes_only_the_backward_pass():
    from tic_tf.neurons import surrogate_sharpness

    x = tf.constant([-0.5, 0.0, 0.25])
    with surrogate_sharpness(2 * math.pi):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = spike(x)
        sharp = tape.gradient(y, x).numpy()
    np.testing.assert_array_equal(y.numpy(), [0, 1, 1])
    np.testing.assert_allclose(sharp, 2.0 / (1.0 + (2 * math.pi * x.numpy()) ** 2), rtol=1e-6)
    with tf.GradientTape() as tape:  # the default is restored after the block
        tape.watch(x)
        y = spike(x)
    np.testing.assert_allclose(tape.gradient(y, x).numpy(),
                               1.0 / (1.0 + (math.pi * x.numpy()) ** 2), rtol=1e-6)


def test_recomputed_states_give_the_stored_states_values():
    keras.utils.set_random_seed(0)
    model = build_model("resnet19", 10, 3, (32, 32, 3), width=0.0625)
    images = tf.random.uniform((4, 32, 32, 3), seed=1)
    labels = tf.constant([0, 1, 2, 3])
    probe = keras.Model(model.input, [layer.output for layer in lif_layers(model)])

    @tf.function
    def spikes_logits_gradients():
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = MeanLogitCrossEntropy()(labels, logits)
        return probe(images, training=True), logits, tape.gradient(
            loss, model.trainable_variables)

    plain = spikes_logits_gradients()
    with recompute_states():
        fast = tf.function(spikes_logits_gradients.python_function)()
    plain_spikes, plain_logits, plain_grads = plain
    fast_spikes, fast_logits, fast_grads = fast
    assert sum(float(tf.reduce_sum(s)) for s in plain_spikes) > 0  # the network does spike
    for a, b in zip(plain_spikes, fast_spikes):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(fast_logits, plain_logits, rtol=1e-5, atol=1e-5)
    for a, b in zip(plain_grads, fast_grads):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
