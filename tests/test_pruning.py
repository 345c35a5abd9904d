"""Magnitude pruning: masks, schedules, callbacks, strip_pruning, and the compute formula."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tic_tf import checkpoints
from tic_tf.losses import MeanLogitCrossEntropy
from tic_tf.models import build_model
from tic_tf.pruning import (ConstantSparsity, PolynomialDecay, PruningSummaries,
                            UpdatePruningStep, attach_masks, auto_timesteps, compute_saved, layer_sparsity, overall_sparsity,
                            prunable_layers, prune_to_sparsity, retraining_schedule,
                            strip_pruning)
from tic_tf.serving import export_saved_model


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    return build_model("resnet19", 10, 2, (32, 32, 3), width=0.0625)


def tiny_data(count=32, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((count, 32, 32, 3), dtype=np.float32),
            rng.integers(0, 10, count).astype(np.int32))


def kernel_sizes(masks):
    return {layer.name: int(np.prod(layer.kernel.shape)) for layer in masks.layers}


def test_every_conv_and_dense_kernel_gets_a_mask():
    model = tiny_model()
    masks = attach_masks(model)
    names = {layer.name for layer in prunable_layers(model)}
    kernels = [w for w in model.weights if w.path.endswith("kernel")]
    assert len(names) == len(kernels) == 21 and names == set(masks.masks)
    assert all(kernel.constraint is not None for _, kernel, _ in masks.pairs())


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_per_layer_pruning_reaches_the_sparsity_in_every_layer(sparsity):
    masks = attach_masks(tiny_model())
    reached = prune_to_sparsity(masks, sparsity, "layer")
    for name, size in kernel_sizes(masks).items():
        assert abs(reached[name] - sparsity) <= 1.0 / size + 1e-12, name


def test_global_pruning_reaches_the_sparsity_overall_with_uneven_layers():
    masks = attach_masks(tiny_model())
    prune_to_sparsity(masks, 0.6, "global")
    total = sum(kernel_sizes(masks).values())
    assert abs(overall_sparsity(masks) - 0.6) <= 1.0 / total
    assert np.ptp(list(layer_sparsity(masks).values())) > 0.05  # one threshold, not per layer
    # Every surviving weight is at least as large as every pruned one.
    kept = np.concatenate([np.abs(k.numpy()[m.numpy() == 1]) for _, k, m in masks.pairs()])
    model = tiny_model()  # same seed: the original weights
    original = {layer.name: np.abs(layer.kernel.numpy()) for layer in prunable_layers(model)}
    pruned = np.concatenate([original[layer.name][m.numpy() == 0]
                             for layer, _, m in masks.pairs()])
    assert kept.min() >= pruned.max()


def test_rounds_of_a_fraction_of_the_remaining_weights_compound():
    masks = attach_masks(tiny_model())
    for round_index in range(1, 4):
        prune_to_sparsity(masks, 1 - 0.5 ** round_index, "layer")
    for name, size in kernel_sizes(masks).items():
        assert abs(layer_sparsity(masks)[name] - 0.875) <= 1.0 / size + 1e-12


def test_pruned_weights_stay_zero_through_training_with_momentum_and_weight_decay(tmp_path):
    model = tiny_model()
    masks = attach_masks(model)
    prune_to_sparsity(masks, 0.5)
    pruned = {name: mask.numpy() == 0 for name, mask in masks.masks.items()}
    before = {layer.name: layer.kernel.numpy() for layer in masks.layers}
    model.compile(keras.optimizers.SGD(0.5, momentum=0.9, weight_decay=1e-2),
                  MeanLogitCrossEntropy(), jit_compile=True)
    images, labels = tiny_data()
    model.fit(images, labels, batch_size=8, epochs=5, verbose=0,
              callbacks=[PruningSummaries(masks, str(tmp_path))])  # 20 steps
    for layer in masks.layers:
        kernel = layer.kernel.numpy()
        assert np.all(kernel[pruned[layer.name]] == 0.0), layer.name
        assert not np.allclose(kernel[~pruned[layer.name]], before[layer.name][~pruned[layer.name]])
    assert list(tmp_path.glob("events.out.tfevents*"))


def test_strip_pruning_keeps_outputs_drops_masks_and_exports(tmp_path):
    model = tiny_model()
    masks = attach_masks(model)
    prune_to_sparsity(masks, 0.7)
    plain = strip_pruning(model)
    images, _ = tiny_data(4)
    np.testing.assert_array_equal(plain(images).numpy(), model(images).numpy())
    assert all(w.constraint is None for w in plain.weights)
    assert len(plain.weights) == len(model.weights)
    assert not any("mask" in w.path for w in plain.weights)
    export = export_saved_model(plain, str(tmp_path / "saved_model"))
    served = tf.saved_model.load(export).signatures["serving_default"](
        images=tf.constant(images))
    expected = tf.nn.softmax(tf.reduce_mean(model(images), 1))
    np.testing.assert_allclose(served["probabilities"].numpy(), expected.numpy(), atol=1e-5)


def test_masks_are_saved_and_restored_with_the_checkpoint(tmp_path):
    model = tiny_model()
    masks = attach_masks(model)
    prune_to_sparsity(masks, 0.5)
    path = checkpoints.write(str(tmp_path / "round-01"), model, {"unused": 1},
                             extra={"masks": masks})
    fresh = tiny_model(seed=1)
    fresh_masks = attach_masks(fresh)
    checkpoints.restore(path, fresh, extra={"masks": fresh_masks})
    for name, mask in masks.masks.items():
        np.testing.assert_array_equal(fresh_masks.masks[name].numpy(), mask.numpy())


def test_schedules_follow_tfmot_semantics():
    constant = ConstantSparsity(0.5, begin_step=10, frequency=5)
    assert [constant(s)[0] for s in (9, 10, 12, 15, 20)] == [False, True, False, True, True]
    decay = PolynomialDecay(0.0, 0.8, begin_step=0, end_step=100, power=3, frequency=10)
    assert decay(0) == (True, pytest.approx(0.0))
    assert decay(50)[1] == pytest.approx(0.8 - 0.8 * 0.5 ** 3)
    assert decay(100) == (True, pytest.approx(0.8))
    assert decay(55)[0] is False
    with pytest.raises(ValueError, match="Sparsity must lie in"):
        ConstantSparsity(1.0)


def test_update_pruning_step_follows_the_schedule_during_training():
    model = tiny_model()
    masks = attach_masks(model)
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), MeanLogitCrossEntropy())
    images, labels = tiny_data()
    schedule = PolynomialDecay(0.0, 0.75, begin_step=0, end_step=6, frequency=2)
    model.fit(images, labels, batch_size=8, epochs=2, verbose=0,  # 8 steps
              callbacks=[UpdatePruningStep(masks, schedule)])
    for name, size in kernel_sizes(masks).items():
        assert abs(layer_sparsity(masks)[name] - 0.75) <= 1.0 / size + 1e-12


def test_compute_saving_formula_gives_the_papers_twenty_percent():
    assert compute_saved(300, 60, 5, 5, 3) == pytest.approx(20.0)
    assert compute_saved(300, 60, 5, 5, 5) == 0.0


def test_auto_timesteps_is_the_last_t_at_or_above_the_threshold():
    assert auto_timesteps([1.0, 0.8, 0.3, 0.2, 0.1], 0.5) == 2
    assert auto_timesteps([0.2, 1.0, 0.6, 0.1], 0.5) == 3
    assert auto_timesteps([0.1, 0.2, 0.3, 0.4], 0.5) == 4  # rising curve: no saving


def test_bad_sparsity_is_refused():
    masks = attach_masks(tiny_model())
    with pytest.raises(ValueError, match="sparsity must lie in"):
        prune_to_sparsity(masks, 1.0)
    with pytest.raises(ValueError, match="scope must be one of"):
        prune_to_sparsity(masks, 0.5, "row")


def test_retraining_rate_restarts_at_full_rate_every_round():
    schedule, steps = retraining_schedule(0.01, 50), 50
    for round_index in range(4):
        for step in (0, 10, 25, 49):
            expected = 0.5 * 0.01 * (1 + np.cos(np.pi * step / steps))
            assert float(schedule(round_index * steps + step)) == pytest.approx(expected,
                                                                                rel=1e-5)
