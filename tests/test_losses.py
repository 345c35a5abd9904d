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


def test_switched_loss_trains_as_cross_entropy_then_as_tet_in_one_compiled_step():
    """One training step of a model compiled with SwitchedLoss, before and after the switch,
    against the same step of twins compiled with each loss alone: the compiled step reads the
    switch when it runs, not when it was traced."""
    import keras

    from tic_tf.losses import LossSwitch, MeanLogitCrossEntropy, SwitchedLoss
    from tic_tf.models import build_model

    rng = np.random.default_rng(0)
    images = rng.random((8, 8, 8, 1), dtype=np.float32)
    labels = rng.integers(0, 3, 8)

    def compiled(loss):
        keras.utils.set_random_seed(0)
        model = build_model("alexnet", 3, 2, (8, 8, 1), width=1 / 16, batch_norm="shared")
        model.compile(keras.optimizers.SGD(0.5), loss)
        return model

    switched = compiled(SwitchedLoss(MeanLogitCrossEntropy(), TETLoss(0.1, 1.0)))
    switch = LossSwitch(epoch=2)
    switch.set_model(switched)
    for epoch, twin_loss in ((0, MeanLogitCrossEntropy()), (1, TETLoss(0.1, 1.0))):
        twin = compiled(twin_loss)
        twin.set_weights(switched.get_weights())
        switch.on_epoch_begin(epoch)
        ours, theirs = switched.train_on_batch(images, labels), twin.train_on_batch(images,
                                                                                    labels)
        assert ours == pytest.approx(theirs, rel=1e-6)
        for a, b in zip(switched.get_weights(), twin.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_training_with_tet_from_epoch_2_takes_cross_entropy_steps_in_epoch_1(tmp_path):
    """Epoch 1 is cross-entropy's, bit for bit; the switch is not stored but set again at each
    epoch's start, so a run resumed after epoch 1 switches as the uninterrupted one did (that
    the switched loss is TET's: the compiled-step test above)."""
    import shutil

    from tic_tf import checkpoints, cli
    from tic_tf.training import TrainConfig, train

    def run(run_dir, *loss):
        train(cli.parse(TrainConfig, [
            "--arch=alexnet", "--width=0.0625", "--timesteps=2", "--train_examples=64",
            "--batch_size=32", "--epochs=2", "--fisher_every=0", "--export=false",
            "--verbose=0", "--keep_checkpoints=all", f"--model_dir={run_dir}", *loss]))
        return [checkpoints.load_model(str(run_dir / "checkpoints" / f"epoch-000{e}"))[0]
                for e in (1, 2)]

    switched = run(tmp_path / "ftet", "--loss=tet", "--tet_from_epoch=2")
    cross_entropy = run(tmp_path / "ce", "--loss=ce")
    for a, b in zip(switched[0].get_weights(), cross_entropy[0].get_weights()):
        np.testing.assert_array_equal(a, b)
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "ftet", resumed_dir)
    shutil.rmtree(resumed_dir / "checkpoints" / "epoch-0002")
    (resumed_dir / "metrics.jsonl").write_text(
        (resumed_dir / "metrics.jsonl").read_text().splitlines(keepends=True)[0])
    resumed = run(resumed_dir, "--loss=tet", "--tet_from_epoch=2")
    assert checkpoints.fingerprint(resumed[1]) == checkpoints.fingerprint(switched[1])
    assert checkpoints.fingerprint(switched[1]) != checkpoints.fingerprint(cross_entropy[1])


def test_loss_switch_turns_when_the_centroid_settles_and_replays_that_on_resume():
    import keras

    from tic_tf.losses import LossSwitch, MeanLogitCrossEntropy, SwitchedLoss
    from tic_tf.models import build_model

    model = build_model("alexnet", 3, 2, (8, 8, 1), width=1 / 16)
    model.compile(keras.optimizers.SGD(0.1), SwitchedLoss(MeanLogitCrossEntropy(), TETLoss()))
    centroids = {2: 2.0, 4: 1.6, 6: 1.55, 8: 1.2}  # measured every 2 epochs; settles at 6

    def second_loss_by_epoch(switch, epochs):
        switch.set_model(model)
        used = []
        for epoch in epochs:
            switch.on_epoch_begin(epoch)
            logs = {"fisher/centroid": centroids[epoch + 1]} if epoch + 1 in centroids else {}
            switch.on_epoch_end(epoch, logs)
            used.append(logs["loss/second"])
        return used

    assert second_loss_by_epoch(LossSwitch(stable_within=0.1), range(8)) == [0] * 6 + [1] * 2
    for finished, expected in ((6, [1, 1]), (5, [0, 1, 1]), (4, [0, 0, 1, 1])):
        history = [(e, c) for e, c in centroids.items() if e <= finished]
        resumed = LossSwitch(stable_within=0.1, history=history)
        assert second_loss_by_epoch(resumed, range(finished, 8)) == expected


def test_training_switches_to_tet_after_the_centroid_settles_and_resumes_so(tmp_path):
    import json
    import shutil

    from tic_tf import cli
    from tic_tf.training import TrainConfig, train

    def run(run_dir):
        train(cli.parse(TrainConfig, [
            "--arch=alexnet", "--width=0.0625", "--timesteps=2", "--train_examples=64",
            "--batch_size=32", "--epochs=3", "--fisher_every=1", "--fisher_samples=8",
            "--loss=tet", "--tet_when_stable=1e9", "--export=false", "--verbose=0",
            "--keep_checkpoints=all", f"--model_dir={run_dir}"]))
        return [json.loads(line) for line in open(run_dir / "metrics.jsonl")]

    # Any two measurements are within 1e9: settled after epoch 2, TET in epoch 3.
    records = run(tmp_path / "run")
    assert [r["loss/second"] for r in records] == [0.0, 0.0, 1.0]
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "run", resumed_dir)
    shutil.rmtree(resumed_dir / "checkpoints" / "epoch-0003")
    (resumed_dir / "metrics.jsonl").write_text("".join(
        json.dumps(r) + "\n" for r in records[:2]))
    assert [r["loss/second"] for r in run(resumed_dir)] == [0.0, 0.0, 1.0]
