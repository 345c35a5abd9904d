import numpy as np
import pytest
import tensorflow as tf

from conftest import solved_model
from tic_tf import surrogates
from tic_tf.attacks import attacked_logits, fgsm, pgd
from tic_tf.errors import UserError
from tic_tf.losses import mean_logits
from tic_tf.models import with_surrogate

# Values that depend on the kernel library: the suite runs these with oneDNN on and off.
pytestmark = pytest.mark.numerical

EPS = 8 / 255


@pytest.fixture(scope="module")
def trained():
    """A tiny ResNet19 (T=3) that tells dark from bright images, by construction."""
    return solved_model(3)


def accuracy(model, adversarial, clean, labels, window=None):
    logits = attacked_logits(model, adversarial, clean, window)
    return float(np.mean(np.argmax(mean_logits(logits).numpy(), -1) == labels))


@pytest.mark.parametrize("seed", range(5))
def test_the_fixture_model_solves_its_task_for_any_seed(seed):
    model, images, labels = solved_model(seed)
    assert accuracy(model, images, images, labels) == 1.0


def test_attacks_stay_in_the_eps_ball_and_the_unit_cube(trained):
    model, images, labels = trained
    for adversarial in (fgsm(model, images, labels, EPS),
                        pgd(model, images, labels, EPS, 2 / 255, 5, random_start=True)):
        adversarial = adversarial.numpy()
        assert np.abs(adversarial - images).max() <= EPS + 1e-6
        assert adversarial.min() >= 0 and adversarial.max() <= 1
        assert np.abs(adversarial - images).max() > EPS / 2  # it did move


def test_pgd_hurts_at_least_as_much_as_fgsm(trained):
    model, images, labels = trained
    eps = 0.25
    clean = accuracy(model, images, images, labels)
    after_fgsm = accuracy(model, fgsm(model, images, labels, eps), images, labels)
    after_pgd = accuracy(model, pgd(model, images, labels, eps, eps / 4, 10), images, labels)
    assert clean > 0.9
    assert after_pgd <= after_fgsm < clean


def test_windowed_attack_leaves_other_timesteps_untouched(trained):
    from tic_tf.corruptions import windowed_frames

    model, images, labels = trained
    adversarial = pgd(model, images, labels, 0.2, 0.05, 5, window=(2, 1))
    frames = windowed_frames(images, adversarial, 3, 2, 1).numpy()
    np.testing.assert_array_equal(frames[:, 0], images)
    np.testing.assert_array_equal(frames[:, 2], images)
    assert np.abs(frames[:, 1] - images).max() > 0.1
    # The window attack optimised for its own timestep beats the full attack's frames there.
    assert accuracy(model, adversarial, images, labels, window=(2, 1)) < 1.0


def test_an_attack_through_another_surrogate_steps_along_that_surrogates_gradient(trained):
    """FGSM through each surrogate against the sign of the input gradient of the summed
    cross-entropy, taken by a tape through the model with that surrogate."""
    model, images, labels = trained
    x = tf.constant(images)
    signs = {}
    for surrogate in (None, 1.0, ("sigmoid", None), ("triangle", 0.5)):
        name, sharpness = surrogate if isinstance(surrogate, tuple) else ("arctan", surrogate)
        network = model if surrogate is None else with_surrogate(
            model, surrogates.DEFAULTS[name] if sharpness is None else sharpness, name)
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = tf.reduce_mean(network(x, training=False), axis=1)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        gradient = tape.gradient(loss, x).numpy()
        expected = np.clip(images + EPS * np.sign(gradient), 0, 1)
        got = fgsm(model, images, labels, EPS, surrogate=surrogate).numpy()
        clear = np.abs(gradient) > 1e-6 * np.abs(gradient).max()  # a sign rounding cannot flip
        assert clear.mean() > 0.5
        np.testing.assert_allclose(got[clear], expected[clear], atol=1e-6)
        signs[surrogate] = np.sign(gradient)
    for other in list(signs)[1:]:  # each surrogate points differently from the trained one
        assert np.mean(signs[None] != signs[other]) > 0.05, other


@pytest.mark.parametrize("kwargs, message", [
    (dict(eps=-0.1), "eps must be >= 0"),
    (dict(window=(0, 1)), "outside"),
    (dict(window=(3, 2)), "outside"),
    (dict(iterations=0), "iterations must be >= 1"),
])
def test_bad_attack_arguments(trained, kwargs, message):
    model, images, labels = trained
    with pytest.raises(UserError, match=message):
        pgd(model, images[:2], labels[:2], **kwargs)


def test_each_batch_of_an_evaluation_starts_pgd_from_its_own_random_point(trained):
    """With a zero step, PGD returns its random start: stateless uniform noise drawn with
    (seed, batch index), clipped to the unit cube."""
    from tic_tf.robustness import EvaluationConfig, perturb

    model, images, labels = trained
    config = EvaluationConfig(checkpoints=("unused",), output_dir="unused", random_start=True,
                              pgd_step=0.0, pgd_iterations=1, seed=7)
    for index in (0, 1):
        start, _ = perturb(config, "pgd", model, tf.constant(images), labels, index, None)
        noise = tf.random.stateless_uniform(images.shape, tf.constant([7, index], tf.int64),
                                            -config.eps, config.eps)
        np.testing.assert_allclose(start.numpy(), np.clip(images + noise.numpy(), 0, 1),
                                   atol=1e-7)
