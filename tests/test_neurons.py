import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from tic_tf.losses import MeanLogitCrossEntropy
from tic_tf.models import build_model, lif_layers, with_surrogate
from tic_tf import surrogates
from tic_tf.neurons import LIF, LIFCell, spike

# Values that depend on the kernel library: the suite runs these with oneDNN on and off.
pytestmark = pytest.mark.numerical


def hand_lif(currents, tau, threshold=1.0, neuron="lif", reset="hard"):
    """Eq. 1 of the paper (or, for "if", U[t] = U[t-1] + I[t]), one neuron, written out step
    by step; after a spike the membrane is set to 0 ("hard") or lowered by the threshold."""
    decay, gain = (1 - 1 / tau, 1 / tau) if neuron == "lif" else (1.0, 1.0)
    membrane, spikes, potentials = 0.0, [], []
    for current in currents:
        membrane = decay * membrane + gain * current
        potentials.append(membrane)
        fired = 1.0 if membrane >= threshold else 0.0
        spikes.append(fired)
        if fired:
            membrane = membrane - threshold if reset == "soft" else 0.0
    return spikes, potentials


# The surrogates' derivatives as their papers write them, a the sharpness.
SURROGATE_FORMULAS = {
    "arctan": lambda x, a: (a / math.pi) / (1.0 + (a * x) ** 2),
    "sigmoid": lambda x, a: a / 4.0 * (1.0 - np.tanh(a * x / 2.0) ** 2),  # a s (1 - s)
    "fast_sigmoid": lambda x, a: a / (2.0 * (1.0 + a * np.abs(x)) ** 2),
    "triangle": lambda x, a: a * np.maximum(0.0, 1.0 - a * np.abs(x)),
    "rectangle": lambda x, a: a * (np.abs(x) < 1.0 / (2.0 * a)),
}


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


def hand_gradient(currents, detach, tau=2.0, threshold=1.0, sharpness=math.pi, neuron="lif",
                  reset="hard", surrogate="arctan"):
    """d(sum of spikes)/d(currents) of one neuron by reverse mode written out by hand: spikes
    H(m - threshold) with the surrogate's derivative, reset m (1 - s) or m - threshold s (s a
    constant when detached)."""
    slope_at = lambda x: SURROGATE_FORMULAS[surrogate](x, sharpness)  # noqa: E731
    decay, gain = (1 - 1 / tau, 1 / tau) if neuron == "lif" else (1.0, 1.0)
    spikes, membranes = hand_lif(currents, tau, threshold, neuron, reset)
    grads, upstream_kept = [], 0.0  # d total / d (membrane kept after step t)
    for membrane, fired in zip(reversed(membranes), reversed(spikes)):
        slope = slope_at(membrane - threshold)
        if reset == "soft":
            d_kept_d_membrane = 1 - (0.0 if detach else threshold * slope)
        else:
            d_kept_d_membrane = (1 - fired) - (0.0 if detach else membrane * slope)
        d_membrane = slope + upstream_kept * d_kept_d_membrane
        grads.append(d_membrane * gain)
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


@pytest.mark.parametrize("neuron, reset, tau", [("lif", "soft", 2.0), ("lif", "soft", 0.75),
                                                ("if", "hard", 2.0), ("if", "soft", 2.0)])
def test_if_and_soft_reset_match_a_hand_computation(neuron, reset, tau):
    currents = [0.8, 1.5, 2.5, -0.4, 3.0, 0.9, 1.1, 2.0]
    expected, _ = hand_lif(currents, tau, 1.0, neuron, reset)
    got = LIF(tau=tau, neuron=neuron, reset=reset)(tf.constant([currents])[..., None])
    np.testing.assert_array_equal(got.numpy()[0, :, 0], expected)
    assert 2 <= sum(expected) < len(currents)  # the sequence exercises firing and silence
    cell = LIFCell(1, tau=tau, neuron=neuron, reset=reset)
    via_rnn = keras.layers.RNN(cell, return_sequences=True)(tf.constant([currents])[..., None])
    np.testing.assert_array_equal(via_rnn.numpy()[0, :, 0], expected)


@pytest.mark.parametrize("neuron, reset, surrogate, sharpness, detach", [
    ("lif", "soft", "sigmoid", 4.0, True), ("lif", "soft", "fast_sigmoid", 2.0, False),
    ("if", "hard", "triangle", 0.8, False), ("if", "soft", "rectangle", 0.3, True),
    ("lif", "hard", "triangle", 1.0, True)])
def test_each_neuron_reset_and_surrogate_has_the_hand_derived_gradient(neuron, reset, surrogate,
                                                                       sharpness, detach):
    currents = [2.2, 1.0, 0.7, 2.4, 0.3, 1.2]
    inputs = tf.constant([currents])[..., None]
    layer = LIF(tau=1.5, detach_reset=detach, neuron=neuron, reset=reset, surrogate=surrogate,
                surrogate_sharpness=sharpness)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        total = tf.reduce_sum(layer(inputs))
    expected = hand_gradient(currents, detach, 1.5, 1.0, sharpness, neuron, reset, surrogate)
    assert np.count_nonzero(expected) >= 3  # the surrogates' supports reach the membranes
    np.testing.assert_allclose(tape.gradient(total, inputs).numpy()[0, :, 0], expected,
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("surrogate", sorted(SURROGATE_FORMULAS))
def test_each_surrogate_gradient_is_its_formula_and_integrates_to_the_steps_jump(surrogate):
    x = np.linspace(-3.0, 3.0, 601, dtype=np.float32)
    for sharpness in (None, 0.7, 5.0):
        inputs = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            y = spike(inputs, sharpness, surrogate)
        a = surrogates.DEFAULTS[surrogate] if sharpness is None else sharpness
        np.testing.assert_array_equal(y.numpy(), (x >= 0).astype(np.float32))
        np.testing.assert_allclose(tape.gradient(y, inputs).numpy(),
                                   SURROGATE_FORMULAS[surrogate](x, a), rtol=1e-5, atol=1e-6)
    wide = np.linspace(-2000.0, 2000.0, 4_000_001)
    for a in (0.7, 5.0):
        assert np.trapezoid(SURROGATE_FORMULAS[surrogate](wide, a), wide) == pytest.approx(
            1.0, abs=2e-3)
    assert SURROGATE_FORMULAS[surrogate](0.0, surrogates.DEFAULTS[surrogate]) == 1.0


@pytest.mark.parametrize("arguments, message", [
    (dict(tau=0.5), "tau must be > 0.5"),
    (dict(neuron="izhikevich"), "Unknown neuron 'izhikevich'; choose one of lif, if"),
    (dict(reset="partial"), "Unknown reset 'partial'; choose one of hard, soft"),
    (dict(surrogate="erf"), "Unknown surrogate 'erf'; choose one of arctan, sigmoid"),
    (dict(surrogate="triangle", surrogate_sharpness=0.0), "sharpness must be positive"),
])
def test_bad_neuron_arguments_are_refused_with_reason(arguments, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        LIFCell(**arguments)


def test_lif_config_round_trip():
    layer = LIF(tau=0.75, threshold=0.5, detach_reset=False, surrogate_sharpness=2.0,
                recompute=True, neuron="if", reset="soft", surrogate="triangle", name="n")
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    cell = clone.cell
    assert (cell.tau, cell.threshold, cell.detach_reset, cell.surrogate_sharpness,
            clone.recompute, cell.neuron, cell.reset, cell.surrogate) == (
        0.75, 0.5, False, 2.0, True, "if", "soft", "triangle")
    assert LIF(surrogate="sigmoid").cell.surrogate_sharpness == 4.0  # the surrogate's default


def test_surrogate_sharpness_changes_only_the_backward_pass():
    x = tf.constant([-0.5, 0.0, 0.25])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = spike(x, 2 * math.pi)
    np.testing.assert_array_equal(y.numpy(), [0, 1, 1])
    np.testing.assert_allclose(tape.gradient(y, x).numpy(),
                               2.0 / (1.0 + (2 * math.pi * x.numpy()) ** 2), rtol=1e-6)


def test_layer_surrogate_sharpness_matches_a_hand_derivation():
    currents = [2.2, 1.0, 0.7, 2.4]
    inputs = tf.constant([currents])[..., None]
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        total = tf.reduce_sum(LIF(surrogate_sharpness=1.5)(inputs))
    np.testing.assert_allclose(tape.gradient(total, inputs).numpy()[0, :, 0],
                               hand_gradient(currents, True, sharpness=1.5), rtol=1e-5)


def test_cell_runs_inside_keras_rnn_as_the_lif_layer_does():
    currents = np.random.default_rng(0).random((3, 6, 8)).astype(np.float32) * 3
    cell = LIFCell(8, tau=0.75, detach_reset=False)
    assert (cell.state_size, cell.output_size) == (8, 8)
    assert cell.get_initial_state(batch_size=5)[0].shape == (5, 8)
    via_rnn = keras.layers.RNN(cell, return_sequences=True)(currents)
    np.testing.assert_array_equal(via_rnn, LIF(tau=0.75, detach_reset=False)(currents))
    per_neuron = [hand_lif(currents[0, :, k], 0.75)[0] for k in range(8)]
    np.testing.assert_array_equal(via_rnn[0].numpy().T, per_neuron)


def test_model_copied_with_another_surrogate_has_that_surrogates_gradients():
    keras.utils.set_random_seed(0)
    trained = build_model("alexnet", 10, 2, (8, 8, 1), width=0.25)
    direct = build_model("alexnet", 10, 2, (8, 8, 1), width=0.25, surrogate_sharpness=1.0)
    direct.set_weights(trained.get_weights())
    copy = with_surrogate(trained, 1.0)
    images = tf.random.uniform((4, 8, 8, 1), seed=2)

    def input_gradient(model):
        with tf.GradientTape() as tape:
            tape.watch(images)
            total = tf.reduce_sum(model(images, training=False))
        return tape.gradient(total, images).numpy()

    np.testing.assert_array_equal(input_gradient(copy), input_gradient(direct))
    np.testing.assert_array_equal(copy(images), trained(images))  # forward pass unchanged
    assert [layer.cell.surrogate_sharpness for layer in lif_layers(trained)] == [math.pi] * len(
        lif_layers(trained))


def test_recomputed_states_give_the_stored_states_values():
    keras.utils.set_random_seed(0)
    stored = build_model("resnet19", 10, 3, (32, 32, 3), width=0.0625)
    recomputed = build_model("resnet19", 10, 3, (32, 32, 3), width=0.0625, recompute=True)
    recomputed.set_weights(stored.get_weights())
    images = tf.random.uniform((4, 32, 32, 3), seed=1)
    labels = tf.constant([0, 1, 2, 3])

    def spikes_logits_gradients(model):
        probe = keras.Model(model.input, [layer.output for layer in lif_layers(model)])

        @tf.function
        def run():
            with tf.GradientTape() as tape:
                logits = model(images, training=True)
                loss = MeanLogitCrossEntropy()(labels, logits)
            return probe(images, training=True), logits, tape.gradient(
                loss, model.trainable_variables)
        return run()

    plain_spikes, plain_logits, plain_grads = spikes_logits_gradients(stored)
    fast_spikes, fast_logits, fast_grads = spikes_logits_gradients(recomputed)
    assert all(layer.recompute for layer in lif_layers(recomputed))
    assert sum(float(tf.reduce_sum(s)) for s in plain_spikes) > 0  # the network does spike
    for a, b in zip(plain_spikes, fast_spikes):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(fast_logits, plain_logits, rtol=1e-5, atol=1e-5)
    for a, b in zip(plain_grads, fast_grads):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("detach", [True, False])
def test_a_run_in_pieces_has_the_whole_runs_spikes_and_gradients(detach):
    currents = tf.constant(np.random.default_rng(3).random((2, 7, 5)).astype(np.float32) * 3)
    weights = tf.constant(np.random.default_rng(4).random((2, 7, 5)).astype(np.float32))
    layer = LIF(tau=1.5, detach_reset=detach)

    def spikes_and_gradient(pieces):
        with tf.GradientTape() as tape:
            tape.watch(currents)
            membrane, spikes, start = tf.zeros_like(currents[:, 0]), [], 0
            for length in pieces:
                piece, membrane = layer.run_from(currents[:, start:start + length], membrane)
                spikes.append(piece)
                start += length
            spikes = tf.concat(spikes, 1)
            total = tf.reduce_sum(spikes * weights)
        return spikes.numpy(), tape.gradient(total, currents).numpy()

    whole_spikes, whole_gradient = spikes_and_gradient([7])
    np.testing.assert_array_equal(whole_spikes, layer(currents).numpy())
    assert 0 < whole_spikes.mean() < 1
    for pieces in ([1] * 7, [3, 1, 3]):
        spikes, gradient = spikes_and_gradient(pieces)
        np.testing.assert_array_equal(spikes, whole_spikes)
        np.testing.assert_allclose(gradient, whole_gradient, rtol=1e-6, atol=1e-7)


def test_bfloat16_currents_give_the_float32_runs_spikes_and_rounded_gradients():
    # The membrane is float32 inside either way: only the casts at the edges differ.
    currents = tf.cast(np.random.default_rng(5).random((3, 6, 4, 4, 2)) * 3, tf.bfloat16)
    weights = tf.cast(np.random.default_rng(6).random((3, 6, 4, 4, 2)), tf.bfloat16)

    def spikes_and_gradient(dtype):
        inputs = tf.cast(currents, dtype)
        layer = LIF(tau=1.5, dtype="mixed_bfloat16" if dtype == tf.bfloat16 else "float32")
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            spikes = layer(inputs)
            total = tf.reduce_sum(tf.cast(spikes * tf.cast(weights, dtype), tf.float32))
        return spikes, tape.gradient(total, inputs)

    spikes16, gradient16 = spikes_and_gradient(tf.bfloat16)
    spikes32, gradient32 = spikes_and_gradient(tf.float32)
    assert (spikes16.dtype, gradient16.dtype) == (tf.bfloat16, tf.bfloat16)
    assert 0 < spikes32.numpy().mean() < 1
    np.testing.assert_array_equal(tf.cast(spikes16, tf.float32).numpy(), spikes32.numpy())
    np.testing.assert_array_equal(tf.cast(gradient16, tf.float32).numpy(),
                                  tf.cast(tf.cast(gradient32, tf.bfloat16), tf.float32).numpy())
