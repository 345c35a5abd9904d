"""Magnitude pruning owned by the model: masks, schedules, callbacks, saving, strip_pruning,
and the paper's compute formula and T_retrain rule."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tic_tf import checkpoints
from tic_tf.iterative_pruning import auto_timesteps, compute_saved
from tic_tf.losses import MeanLogitCrossEntropy
from tic_tf.models import build_model
from tic_tf.pruning import (ConstantSparsity, PolynomialDecay, PruneLowMagnitude,
                            PruningSummaries, UpdatePruningStep, layer_sparsity,
                            overall_sparsity, prunable_layers, prune_low_magnitude,
                            prune_to_sparsity, pruned_layers, retraining_schedule,
                            strip_pruning)
from tic_tf.serving import export_saved_model


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    return build_model("resnet19", 10, 2, (32, 32, 3), width=0.0625)


def tiny_data(count=32, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((count, 32, 32, 3), dtype=np.float32),
            rng.integers(0, 10, count).astype(np.int32))


def kernel_sizes(model):
    return {w.layer.name: int(np.prod(w.layer.kernel.shape)) for w in pruned_layers(model)}


def masks_of(model):
    return {w.layer.name: w.mask.numpy() for w in pruned_layers(model)}


def test_every_conv_and_dense_kernel_gets_a_mask_and_keeps_its_weights():
    model = tiny_model()
    pruned = prune_low_magnitude(model)
    kernels = [w for w in model.weights if w.path.endswith("kernel")]
    assert len(pruned_layers(pruned)) == len(kernels) == 21
    assert all(isinstance(w.layer.kernel.constraint, keras.constraints.Constraint)
               for w in pruned_layers(pruned))
    images, _ = tiny_data(4)
    np.testing.assert_array_equal(pruned(images), model(images))  # masks start all ones


def stable_argsort_masks(model, sparsity):
    """The per-layer masks by an independent host computation: zero the round(s * n)
    smallest |w| of each kernel, the lower index first among equals."""
    masks = {}
    for layer in prunable_layers(model):
        magnitudes = np.abs(layer.kernel.numpy()).ravel()
        mask = np.ones(magnitudes.size, np.float32)
        mask[np.argsort(magnitudes, kind="stable")[:int(round(sparsity * magnitudes.size))]] = 0
        masks[layer.name] = mask.reshape(layer.kernel.shape)
    return masks


@pytest.mark.numerical
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_per_layer_pruning_zeroes_exactly_the_smallest_weights_of_every_layer(sparsity):
    model = tiny_model()
    pruned = prune_low_magnitude(model)
    reached = prune_to_sparsity(pruned, sparsity, "layer")
    expected = stable_argsort_masks(model, sparsity)
    for name, mask in masks_of(pruned).items():
        np.testing.assert_array_equal(mask, expected[name])
        assert reached[name] == pytest.approx(1 - expected[name].mean())


@pytest.mark.numerical
def test_ties_are_broken_by_index_as_a_stable_sort_would():
    layer = keras.layers.Dense(4, use_bias=False)
    model = keras.Sequential([keras.Input((3,)), layer])
    layer.kernel.assign(np.array([[0.5, 0.1, 0.1, 0.2], [0.1, 0.3, 0.1, 0.4],
                                  [0.2, 0.1, 0.6, 0.1]], np.float32))
    pruned = prune_low_magnitude(model)
    prune_to_sparsity(pruned, 0.25, "layer")  # 3 of the six 0.1s, the first three
    np.testing.assert_array_equal(pruned_layers(pruned)[0].mask.numpy(),
                                  [[1, 0, 0, 1], [0, 1, 1, 1], [1, 1, 1, 1]])


@pytest.mark.numerical
def test_global_pruning_reaches_the_sparsity_overall_with_uneven_layers():
    model = tiny_model()
    pruned = prune_low_magnitude(model)
    prune_to_sparsity(pruned, 0.6, "global")
    total = sum(kernel_sizes(pruned).values())
    assert abs(overall_sparsity(pruned) - 0.6) <= 1.0 / total
    # One threshold over all layers: every surviving weight is at least as large as every
    # pruned one, so layers end up with different sparsities.
    original = {layer.name: np.abs(layer.kernel.numpy()) for layer in prunable_layers(model)}
    masks = masks_of(pruned)
    kept = np.concatenate([original[n][m == 1] for n, m in masks.items()])
    removed = np.concatenate([original[n][m == 0] for n, m in masks.items()])
    assert kept.min() >= removed.max()
    assert np.ptp(list(layer_sparsity(pruned).values())) > 0.05


def test_rounds_of_a_fraction_of_the_remaining_weights_compound():
    model = tiny_model()
    pruned = prune_low_magnitude(model)
    for round_index in range(1, 4):
        prune_to_sparsity(pruned, 1 - 0.5 ** round_index, "layer")
    expected = stable_argsort_masks(model, 0.875)  # no retraining: the same weights go
    for name, mask in masks_of(pruned).items():
        np.testing.assert_array_equal(mask, expected[name])


@pytest.mark.numerical
def test_pruned_weights_stay_zero_through_training_with_momentum_and_weight_decay(tmp_path):
    pruned = prune_low_magnitude(tiny_model())
    prune_to_sparsity(pruned, 0.5)
    masks = masks_of(pruned)
    before = {w.layer.name: w.layer.kernel.numpy() for w in pruned_layers(pruned)}
    pruned.compile(keras.optimizers.SGD(0.5, momentum=0.9, weight_decay=1e-2),
                   MeanLogitCrossEntropy(), jit_compile=True)
    images, labels = tiny_data()
    history = pruned.fit(images, labels, batch_size=8, epochs=5, verbose=0,
                         callbacks=[PruningSummaries(str(tmp_path))])  # 20 steps
    for wrapper in pruned_layers(pruned):
        kernel, kept = wrapper.layer.kernel.numpy(), masks[wrapper.layer.name] == 1
        assert np.all(kernel[~kept] == 0.0), wrapper.layer.name
        assert not np.allclose(kernel[kept], before[wrapper.layer.name][kept])
    assert history.history["sparsity/overall"][-1] == pytest.approx(overall_sparsity(pruned))


def test_a_layers_own_kernel_constraint_is_kept_under_the_mask():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(
        5, kernel_constraint=keras.constraints.NonNeg())])
    pruned = prune_low_magnitude(model)
    prune_to_sparsity(pruned, 0.4)
    pruned.compile(keras.optimizers.SGD(1.0), "mse")
    rng = np.random.default_rng(0)
    pruned.fit(rng.random((64, 6)), -rng.random((64, 5)) * 10, epochs=3, verbose=0)
    kernel, mask = pruned_layers(pruned)[0].layer.kernel.numpy(), masks_of(pruned)
    assert kernel.min() == 0.0  # pushed below zero by the targets, held at zero by NonNeg
    assert np.all(kernel[list(mask.values())[0] == 0] == 0)


def test_a_pruned_model_saved_and_loaded_keeps_its_masks_and_keeps_them_through_training(
        tmp_path):
    pruned = prune_low_magnitude(tiny_model(), ConstantSparsity(0.6, begin_step=0,
                                                                frequency=1000))
    prune_to_sparsity(pruned, 0.6)
    path = str(tmp_path / "pruned.keras")
    pruned.save(path)
    loaded = keras.models.load_model(path)
    for name, mask in masks_of(pruned).items():
        np.testing.assert_array_equal(masks_of(loaded)[name], mask)
    assert isinstance(pruned_layers(loaded)[0].schedule, ConstantSparsity)
    images, labels = tiny_data()
    loaded.compile(keras.optimizers.SGD(0.5, momentum=0.9), MeanLogitCrossEntropy())
    loaded.fit(images, labels, batch_size=8, epochs=2, verbose=0,
               callbacks=[UpdatePruningStep()])
    for wrapper in pruned_layers(loaded):
        kept = masks_of(pruned)[wrapper.layer.name] == 1
        assert np.all(wrapper.layer.kernel.numpy()[~kept] == 0.0)


def test_training_a_scheduled_model_without_the_step_callback_is_refused():
    pruned = prune_low_magnitude(tiny_model(), ConstantSparsity(0.5))
    pruned.compile(keras.optimizers.SGD(0.1), MeanLogitCrossEntropy())
    images, labels = tiny_data(8)
    before = [w.numpy().copy() for w in pruned.trainable_weights]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="pass tic_tf.pruning.UpdatePruningStep"):
        pruned.fit(images, labels, batch_size=8, epochs=1, verbose=0)
    for weight, value in zip(pruned.trainable_weights, before):  # no step was taken
        np.testing.assert_array_equal(weight.numpy(), value)


def test_strip_pruning_keeps_outputs_drops_masks_and_exports(tmp_path):
    model = tiny_model()
    pruned = prune_low_magnitude(model)
    prune_to_sparsity(pruned, 0.7)
    plain = strip_pruning(pruned)
    images, _ = tiny_data(4)
    np.testing.assert_array_equal(plain(images).numpy(), pruned(images).numpy())
    assert all(w.constraint is None for w in plain.weights)
    assert [w.shape for w in plain.weights] == [w.shape for w in model.weights]
    assert not any("mask" in w.path or "pruning" in w.path for w in plain.weights)
    export = export_saved_model(plain, str(tmp_path / "saved_model"))
    served = tf.saved_model.load(export).signatures["serving_default"](
        images=tf.constant(images))
    expected = tf.nn.softmax(tf.reduce_mean(pruned(images), 1))
    np.testing.assert_allclose(served["probabilities"].numpy(), expected.numpy(), atol=1e-5)


def test_masks_are_saved_and_restored_with_the_checkpoint(tmp_path):
    pruned = prune_low_magnitude(tiny_model())
    prune_to_sparsity(pruned, 0.5)
    config = {"arch": "resnet19", "num_classes": 10, "timesteps": 2,
              "input_shape": [32, 32, 3], "width": 0.0625, "batch_norm": "per_timestep",
              "pruned": True}
    path = checkpoints.write(str(tmp_path / "round-01"), pruned, config)
    loaded, _ = checkpoints.load_model(path)
    for name, mask in masks_of(pruned).items():
        np.testing.assert_array_equal(masks_of(loaded)[name], mask)
    images, _ = tiny_data(4)
    np.testing.assert_array_equal(loaded(images), pruned(images))


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


def test_schedules_serialise_with_their_settings():
    decay = PolynomialDecay(0.1, 0.8, begin_step=5, end_step=50, power=2, frequency=5)
    copy = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(decay))
    assert isinstance(copy, PolynomialDecay)
    assert [copy(s) for s in range(0, 60, 5)] == [decay(s) for s in range(0, 60, 5)]


def test_update_pruning_step_follows_the_schedule_during_training():
    schedule = PolynomialDecay(0.0, 0.75, begin_step=0, end_step=6, frequency=2)
    pruned = prune_low_magnitude(tiny_model(), schedule)
    pruned.compile(keras.optimizers.SGD(0.1, momentum=0.9), MeanLogitCrossEntropy())
    images, labels = tiny_data()
    pruned.fit(images, labels, batch_size=8, epochs=2, verbose=0,  # 8 steps
               callbacks=[UpdatePruningStep()])
    for name, size in kernel_sizes(pruned).items():
        assert abs(layer_sparsity(pruned)[name] - 0.75) <= 1.0 / size + 1e-12
    assert all(int(w.pruning_step.numpy()) == 8 for w in pruned_layers(pruned))


def test_compute_saving_formula_gives_the_papers_twenty_percent():
    assert compute_saved(300, 60, 5, 5, 3) == pytest.approx(20.0)
    assert compute_saved(300, 60, 5, 5, 5) == 0.0


def test_auto_timesteps_is_the_last_t_at_or_above_the_threshold():
    assert auto_timesteps([1.0, 0.8, 0.3, 0.2, 0.1], 0.5) == 2
    assert auto_timesteps([0.2, 1.0, 0.6, 0.1], 0.5) == 3
    assert auto_timesteps([0.1, 0.2, 0.3, 0.4], 0.5) == 4  # rising curve: no saving


def test_bad_sparsity_and_unpruned_models_are_refused():
    model = tiny_model()
    pruned = prune_low_magnitude(model)
    with pytest.raises(ValueError, match="sparsity must lie in"):
        prune_to_sparsity(pruned, 1.0)
    with pytest.raises(ValueError, match="scope must be one of"):
        prune_to_sparsity(pruned, 0.5, "row")
    with pytest.raises(ValueError, match="needs a model from prune_low_magnitude"):
        prune_to_sparsity(model, 0.5)
    with pytest.raises(ValueError, match="already pruned"):
        prune_low_magnitude(pruned)
    with pytest.raises(ValueError, match="wraps Conv2D and Dense"):
        PruneLowMagnitude(keras.layers.ReLU())


def test_retraining_rate_restarts_at_full_rate_every_round():
    schedule, steps = retraining_schedule(0.01, 50), 50
    for round_index in range(4):
        for step in (0, 10, 25, 49):
            expected = 0.5 * 0.01 * (1 + np.cos(np.pi * step / steps))
            assert float(schedule(round_index * steps + step)) == pytest.approx(expected,
                                                                                rel=1e-5)
