import math

import numpy as np
import pytest
import tensorflow as tf

from tic_tf.losses import (AlphaLoss, TETLoss, accumulated_logits, alpha_loss,
                           per_timestep_losses, tet_loss)

LOGITS = np.array([[[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 3.0]],
                   [[0.5, 0.5, 0.0], [-1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]], np.float32)
LABELS = np.array([0, 1])


def hand_cross_entropy(logits, label):
    return math.log(sum(math.exp(v) for v in logits)) - logits[label]


def hand_per_timestep_losses():
    losses = np.zeros((2, 3))
    for n in range(2):
        for t in range(3):
            accumulated = LOGITS[n, :t + 1].mean(axis=0)
            losses[n, t] = hand_cross_entropy(accumulated, LABELS[n])
    return losses


def test_accumulated_logits_are_running_means():
    np.testing.assert_allclose(accumulated_logits(tf.constant(LOGITS)).numpy()[0, 1],
                               [1.0, 0.5, -0.5])


def test_per_timestep_losses_match_hand_computation():
    np.testing.assert_allclose(per_timestep_losses(LOGITS, LABELS).numpy(),
                               hand_per_timestep_losses(), rtol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 2.0])
def test_alpha_loss_matches_eq_9_and_10(alpha):
    batch_mean = hand_per_timestep_losses().mean(axis=0)
    expected = np.mean(np.abs(batch_mean - alpha))
    assert float(alpha_loss(tf.constant(LOGITS), LABELS, alpha)) == pytest.approx(expected,
                                                                                   rel=1e-6)
    assert float(AlphaLoss(alpha)(LABELS, LOGITS)) == pytest.approx(expected, rel=1e-6)


def test_alpha_loss_gradient_flips_sign_below_alpha():
    logits = tf.Variable(LOGITS)
    below, above = 0.1, 10.0  # every L_t is between these two alphas

    def gradient(alpha):
        with tf.GradientTape() as tape:
            loss = alpha_loss(logits, LABELS, alpha)
        return tape.gradient(loss, logits).numpy()

    losses = hand_per_timestep_losses().mean(axis=0)
    assert losses.min() > below and losses.max() < above
    np.testing.assert_allclose(gradient(below), -gradient(above), rtol=1e-6)
    assert np.abs(gradient(below)).sum() > 0


@pytest.mark.parametrize("lamb, target", [(1e-3, 1.0), (0.0, 1.0), (0.3, -0.5)])
def test_tet_loss_is_the_mean_of_each_timesteps_own_cross_entropy_plus_its_mse(lamb, target):
    expected = [(1 - lamb) * np.mean([hand_cross_entropy(LOGITS[n, t], LABELS[n])
                                      for t in range(3)])
                + lamb * np.mean((LOGITS[n] - target) ** 2) for n in range(2)]
    np.testing.assert_allclose(tet_loss(LOGITS, LABELS, lamb, target).numpy(), expected,
                               rtol=1e-6)
    keras_loss = TETLoss(lamb, target)  # the batch mean, as TET's code reduces it
    assert float(keras_loss(LABELS, LOGITS)) == pytest.approx(np.mean(expected), rel=1e-6)
    clone = TETLoss.from_config(keras_loss.get_config())
    assert (clone.lamb, clone.target) == (lamb, target)
