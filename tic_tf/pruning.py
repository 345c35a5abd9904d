"""Magnitude pruning for Keras 3 models, in the style of tensorflow-model-optimization.

tensorflow-model-optimization's pruning targets Keras 2, so this is the small part we need:

    masks = attach_masks(model)              # one 0/1 mask per Conv2D / Dense kernel
    prune_to_sparsity(masks, 0.5)            # zero the 50% smallest weights of every layer
    model.fit(..., callbacks=[UpdatePruningStep(masks, PolynomialDecay(0, 0.8, 0, 1000)),
                              PruningSummaries(masks, log_dir)])
    plain = strip_pruning(model)             # same outputs, no masks, exportable

A mask is applied as the kernel's constraint, which Keras 3's optimizer runs after every
update, so neither momentum nor weight decay can regrow a pruned weight; this holds under
tf.distribute and XLA alike. The masks live in a `PruningMasks` module, saved in checkpoints
next to the model (`checkpoints.save(..., extra={"masks": masks})`).
"""
import keras
import numpy as np
import tensorflow as tf

from tic_tf.models import TimeFolded

SCOPES = ("layer", "global")


def prunable_layers(model):
    """The Conv2D and Dense layers of `model` (inside TimeFolded wrappers too), in graph order."""
    found = []
    for node in model.layers:
        inner = node.layer if isinstance(node, TimeFolded) else node
        if isinstance(inner, (keras.layers.Conv2D, keras.layers.Dense)):
            found.append(inner)
    return found


class PruningMasks(tf.Module):
    """One non-trainable 0/1 mask per prunable kernel, keyed by layer name."""

    def __init__(self, layers):
        super().__init__(name="pruning_masks")
        self.layers = list(layers)
        self.masks = {layer.name: tf.Variable(tf.ones(layer.kernel.shape), trainable=False,
                                              name=f"{layer.name}_mask")
                      for layer in self.layers}

    def pairs(self):
        """(layer, kernel, mask) for every prunable layer."""
        return [(layer, layer.kernel, self.masks[layer.name]) for layer in self.layers]

    def apply(self):
        """Zero the masked weights now (after restoring, or after changing the masks)."""
        for _, kernel, mask in self.pairs():
            kernel.assign(kernel * tf.cast(mask, kernel.dtype))


class _MaskConstraint(keras.constraints.Constraint):
    def __init__(self, mask):
        self.mask = mask

    def __call__(self, weight):
        return weight * tf.cast(self.mask, weight.dtype)


def attach_masks(model):
    """Give every Conv2D/Dense kernel of `model` a mask (all ones) enforced after each update.

    Call it before `model.compile` traces a training step, and inside `strategy.scope()`
    under tf.distribute, so the masks are created as distributed variables.
    """
    masks = PruningMasks(prunable_layers(model))
    if not masks.layers:
        raise ValueError(f"Model {model.name} has no Conv2D or Dense layer to prune.")
    for _, kernel, mask in masks.pairs():
        kernel.constraint = _MaskConstraint(mask)
    return masks


def _keep_largest(magnitudes, count_to_prune):
    """A 0/1 mask of `magnitudes`' shape that zeroes exactly its `count_to_prune` smallest."""
    order = np.argsort(magnitudes, axis=None, kind="stable")
    mask = np.ones(magnitudes.size, np.float32)
    mask[order[:count_to_prune]] = 0.0
    return mask.reshape(magnitudes.shape)


def prune_to_sparsity(masks, sparsity, scope="layer"):
    """Set the masks so that a `sparsity` fraction of the weights is zero, smallest |w| first.

    scope "layer": every layer reaches `sparsity` on its own; "global": one magnitude ranking
    over all prunable weights, so layers end up with different sparsities. Weights already
    pruned have magnitude 0, so they stay pruned: calling it with a rising sparsity prunes a
    fraction of the remaining weights each time. Returns the sparsity reached per layer.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}.")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}.")
    kernels = [np.abs(kernel.numpy() * mask.numpy()) for _, kernel, mask in masks.pairs()]
    if scope == "layer":
        new_masks = [_keep_largest(k, int(round(sparsity * k.size))) for k in kernels]
    else:
        flat = np.concatenate([k.ravel() for k in kernels])
        joint = _keep_largest(flat, int(round(sparsity * flat.size)))
        bounds = np.cumsum([0] + [k.size for k in kernels])
        new_masks = [joint[a:b].reshape(k.shape) for a, b, k in zip(bounds, bounds[1:], kernels)]
    for (_, _, mask), value in zip(masks.pairs(), new_masks):
        mask.assign(value)
    masks.apply()
    return layer_sparsity(masks)


def layer_sparsity(masks):
    """The fraction of exactly-zero weights in each prunable kernel, by layer name."""
    return {layer.name: float(np.mean(kernel.numpy() == 0)) for layer, kernel, _ in masks.pairs()}


def overall_sparsity(masks):
    """The fraction of exactly-zero weights over all prunable kernels."""
    zeros = sum(int(np.sum(kernel.numpy() == 0)) for _, kernel, _ in masks.pairs())
    return zeros / sum(int(kernel.shape.num_elements()) for _, kernel, _ in masks.pairs())


def compute_saved(train_epochs, retrain_epochs, rounds, timesteps, retrain_timesteps):
    """The paper's compute saving in percent: N_r R (T - T_r) / (N T + N_r R T) * 100."""
    total = train_epochs * timesteps + retrain_epochs * rounds * timesteps
    return 100.0 * retrain_epochs * rounds * (timesteps - retrain_timesteps) / total


def retraining_schedule(learning_rate, steps_per_round):
    """Cosine decay from `learning_rate` to 0 over each round's `steps_per_round` steps,
    restarting at the full rate every round (Keras' default t_mul=2 would double the second
    round's period, so it ended at half the rate and the third started at half)."""
    return keras.optimizers.schedules.CosineDecayRestarts(
        learning_rate, first_decay_steps=steps_per_round, t_mul=1.0, m_mul=1.0)


def auto_timesteps(fisher_values, threshold):
    """The smallest t (1-based) such that I_s < threshold * max(I) for every s > t."""
    values = np.asarray(fisher_values, dtype=np.float64)
    above = np.nonzero(values >= threshold * values.max())[0]
    return int(above[-1]) + 1


def strip_pruning(model):
    """A plain copy of `model`: same weights (pruned ones zero) and outputs, no masks or
    mask constraints, ready for `serving.export_saved_model`."""
    plain = keras.Model.from_config(model.get_config())
    plain.set_weights(model.get_weights())
    return plain


class ConstantSparsity:
    """Prune to `target_sparsity` at `begin_step` and every `frequency` steps until `end_step`
    (-1: no end), as tfmot's schedule of the same name."""

    def __init__(self, target_sparsity, begin_step=0, end_step=-1, frequency=100):
        _check_schedule(target_sparsity, begin_step, end_step, frequency)
        self.target_sparsity = target_sparsity
        self.begin_step, self.end_step, self.frequency = begin_step, end_step, frequency

    def __call__(self, step):
        """(whether to prune at `step`, the sparsity to prune to)."""
        return _due(step, self.begin_step, self.end_step, self.frequency), self.target_sparsity


class PolynomialDecay:
    """Sparsity rising from `initial_sparsity` at `begin_step` to `final_sparsity` at
    `end_step` as final + (initial - final) * (1 - progress)^power, pruning every `frequency`
    steps (tfmot's schedule of the same name)."""

    def __init__(self, initial_sparsity, final_sparsity, begin_step, end_step, power=3,
                 frequency=100):
        _check_schedule(final_sparsity, begin_step, end_step, frequency)
        _check_schedule(initial_sparsity, begin_step, end_step, frequency)
        if end_step <= begin_step:
            raise ValueError("PolynomialDecay needs end_step > begin_step.")
        self.initial_sparsity, self.final_sparsity = initial_sparsity, final_sparsity
        self.begin_step, self.end_step = begin_step, end_step
        self.power, self.frequency = power, frequency

    def __call__(self, step):
        progress = min(1.0, max(0.0, (step - self.begin_step) / (self.end_step - self.begin_step)))
        sparsity = self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (
            1.0 - progress) ** self.power
        due = _due(step, self.begin_step, self.end_step, self.frequency) or step == self.end_step
        return due, sparsity


def _check_schedule(sparsity, begin_step, end_step, frequency):
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"Sparsity must lie in [0, 1), got {sparsity}.")
    if begin_step < 0 or frequency < 1 or (end_step != -1 and end_step < begin_step):
        raise ValueError("Schedules need begin_step >= 0, frequency >= 1 and end_step -1 or "
                         ">= begin_step.")


def _due(step, begin_step, end_step, frequency):
    in_range = step >= begin_step and (end_step == -1 or step <= end_step)
    return in_range and (step - begin_step) % frequency == 0


class UpdatePruningStep(keras.callbacks.Callback):
    """Counts optimizer steps and re-prunes the masks when `schedule(step)` says so.

    Between re-prunings the kernel constraints keep pruned weights at exactly zero after
    every optimizer step; on training start the masks are applied to the (maybe restored)
    weights.
    """

    def __init__(self, masks, schedule, scope="layer"):
        super().__init__()
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}.")
        self.masks, self.schedule, self.scope = masks, schedule, scope
        self.step = 0

    def on_train_begin(self, logs=None):
        self.masks.apply()
        self.step = int(self.model.optimizer.iterations.numpy())
        self._maybe_prune()

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        self._maybe_prune()

    def _maybe_prune(self):
        due, sparsity = self.schedule(self.step)
        if due:
            prune_to_sparsity(self.masks, sparsity, self.scope)


class PruningSummaries(keras.callbacks.Callback):
    """Adds `sparsity/<layer>` per prunable layer and `sparsity/overall` to each epoch's logs
    and writes them to TensorBoard under `log_dir`."""

    def __init__(self, masks, log_dir):
        super().__init__()
        self.masks = masks
        self.writer = tf.summary.create_file_writer(log_dir)

    def on_epoch_end(self, epoch, logs=None):
        values = {f"sparsity/{name}": value
                  for name, value in layer_sparsity(self.masks).items()}
        values["sparsity/overall"] = overall_sparsity(self.masks)
        with self.writer.as_default(step=epoch + 1):
            for name, value in values.items():
                tf.summary.scalar(name, value)
        self.writer.flush()
        if logs is not None:
            logs["sparsity/overall"] = values["sparsity/overall"]
