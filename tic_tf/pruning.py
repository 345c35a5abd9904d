"""Magnitude pruning for Keras 3 models, in the style of tensorflow-model-optimization.

tensorflow-model-optimization's pruning targets Keras 2, so this is the part we need:

    pruned = prune_low_magnitude(model, PolynomialDecay(0, 0.8, 0, 1000))
    pruned.compile(...)
    pruned.fit(..., callbacks=[UpdatePruningStep(), PruningSummaries(log_dir)])
    plain = strip_pruning(pruned)            # same outputs, no masks, exportable

or, pruning by hand between trainings: `pruned = prune_low_magnitude(model)` (no schedule),
`prune_to_sparsity(pruned, 0.5)`, then train as usual.

Every Conv2D and Dense layer is wrapped in `PruneLowMagnitude`, which owns the layer's 0/1
mask as a weight, so the masks belong to the model: `model.save` / `keras.models.load_model`
and checkpoints keep them. The mask is applied as a constraint of the kernel variable, which
Keras 3's optimizer runs after every update (composed with the layer's own kernel constraint,
if any), so neither momentum nor weight decay can regrow a pruned weight; this holds under
tf.distribute and XLA alike. Thresholds are found on the device (`tf.math.top_k`).
"""
import keras
import numpy as np
import tensorflow as tf

from tic_tf.models import TimeFolded, rebuilt
from tic_tf.summaries import SummaryCallback

SCOPES = ("layer", "global")


def _check_sparsity(sparsity, name="sparsity"):
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {sparsity}.")


def _due(step, begin_step, end_step, frequency):
    in_range = step >= begin_step and (end_step == -1 or step <= end_step)
    return in_range and (step - begin_step) % frequency == 0


def _check_steps(begin_step, end_step, frequency):
    if begin_step < 0 or frequency < 1 or (end_step != -1 and end_step < begin_step):
        raise ValueError("Schedules need begin_step >= 0, frequency >= 1 and end_step -1 or "
                         ">= begin_step.")


@keras.saving.register_keras_serializable(package="tic_tf")
class ConstantSparsity:
    """Prune to `target_sparsity` at `begin_step` and every `frequency` steps until `end_step`
    (-1: no end), as tfmot's schedule of the same name."""

    def __init__(self, target_sparsity, begin_step=0, end_step=-1, frequency=100):
        _check_sparsity(target_sparsity, "Sparsity")
        _check_steps(begin_step, end_step, frequency)
        self.target_sparsity = float(target_sparsity)
        self.begin_step, self.end_step, self.frequency = begin_step, end_step, frequency

    def __call__(self, step):
        """(whether to prune at `step`, the sparsity to prune to)."""
        return _due(step, self.begin_step, self.end_step, self.frequency), self.target_sparsity

    def get_config(self):
        return {"target_sparsity": self.target_sparsity, "begin_step": self.begin_step,
                "end_step": self.end_step, "frequency": self.frequency}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="tic_tf")
class PolynomialDecay:
    """Sparsity rising from `initial_sparsity` at `begin_step` to `final_sparsity` at
    `end_step` as final + (initial - final) * (1 - progress)^power, pruning every `frequency`
    steps (tfmot's schedule of the same name)."""

    def __init__(self, initial_sparsity, final_sparsity, begin_step, end_step, power=3,
                 frequency=100):
        _check_sparsity(initial_sparsity, "Sparsity")
        _check_sparsity(final_sparsity, "Sparsity")
        _check_steps(begin_step, end_step, frequency)
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

    def get_config(self):
        return {"initial_sparsity": self.initial_sparsity,
                "final_sparsity": self.final_sparsity, "begin_step": self.begin_step,
                "end_step": self.end_step, "power": self.power, "frequency": self.frequency}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="tic_tf")
class MaskConstraint(keras.constraints.Constraint):
    """`weight * mask`, after the layer's own constraint `inner` (if any)."""

    def __init__(self, mask, inner=None):
        self.mask, self.inner = mask, inner

    def __call__(self, weight):
        if self.inner is not None:
            weight = self.inner(weight)
        return weight * tf.cast(self.mask, weight.dtype)


@keras.saving.register_keras_serializable(package="tic_tf")
class PruneLowMagnitude(keras.layers.Wrapper):
    """A Conv2D or Dense layer whose kernel carries a 0/1 mask, a weight of this wrapper.

    With a `schedule`, training must run `UpdatePruningStep` (it refuses to train without:
    the schedule would silently never prune); `scope` is how the schedule prunes ("layer" or
    "global", see `prune_to_sparsity`).
    """

    def __init__(self, layer, schedule=None, scope="layer", **kwargs):
        super().__init__(layer, **kwargs)
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            raise ValueError(f"PruneLowMagnitude wraps Conv2D and Dense layers, not "
                             f"{type(layer).__name__}.")
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}.")
        if isinstance(schedule, dict):
            schedule = keras.saving.deserialize_keras_object(schedule)
        self.schedule, self.scope = schedule, scope

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        kernel = self.layer.kernel
        self.mask = self.add_weight(name="mask", shape=kernel.shape, initializer="ones",
                                    trainable=False, dtype="float32")
        # The optimizer step the schedule has seen; -1 until UpdatePruningStep sets it.
        self.pruning_step = self.add_weight(name="pruning_step", shape=(), initializer=
                                            keras.initializers.Constant(-1), dtype="int64",
                                            trainable=False)
        kernel.constraint = MaskConstraint(self.mask, kernel.constraint)
        self.built = True

    def call(self, inputs, training=None):
        if training and self.schedule is not None:
            tf.debugging.assert_non_negative(
                self.pruning_step, message="This model prunes on a schedule: pass "
                "tic_tf.pruning.UpdatePruningStep() to fit's callbacks.")
        return self.layer(inputs)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        schedule = (None if self.schedule is None
                    else keras.saving.serialize_keras_object(self.schedule))
        return {**super().get_config(), "schedule": schedule, "scope": self.scope}


def _inner(layer):
    return layer.layer if isinstance(layer, TimeFolded) else layer


def pruned_layers(model):
    """The PruneLowMagnitude wrappers of `model` (inside TimeFolded too), in graph order."""
    return [_inner(layer) for layer in model.layers
            if isinstance(_inner(layer), PruneLowMagnitude)]


def prunable_layers(model):
    """The Conv2D and Dense layers of `model` (inside TimeFolded and pruning wrappers too),
    in graph order."""
    found = []
    for layer in model.layers:
        inner = _inner(layer)
        inner = inner.layer if isinstance(inner, PruneLowMagnitude) else inner
        if isinstance(inner, (keras.layers.Conv2D, keras.layers.Dense)):
            found.append(inner)
    return found


def _copy_weights(source, target):
    """Weights of `source` into `target`, two copies of one network that differ only in
    pruning wrappers (the wrappers' masks and steps keep their values)."""
    def plain(layer):
        inner = _inner(layer)
        return inner.layer if isinstance(inner, PruneLowMagnitude) else inner

    for theirs, ours in zip(source.layers, target.layers):
        plain(ours).set_weights(plain(theirs).get_weights())


def prune_low_magnitude(model, schedule=None, scope="layer"):
    """A copy of `model`, same weights, with every Conv2D and Dense layer wrapped in
    `PruneLowMagnitude` (masks all ones). Build it inside `strategy.scope()` under
    tf.distribute, so the masks are distributed variables."""
    if not prunable_layers(model):
        raise ValueError(f"Model {model.name} has no Conv2D or Dense layer to prune.")
    if pruned_layers(model):
        raise ValueError(f"Model {model.name} is already pruned.")

    def change(layer, config):
        inner = _inner(layer)
        if not isinstance(inner, (keras.layers.Conv2D, keras.layers.Dense)):
            return None
        wrapped = PruneLowMagnitude(inner.__class__.from_config(inner.get_config()), schedule,
                                    scope, name=f"{inner.name}_pruned")
        return TimeFolded(wrapped, name=layer.name) if layer is not inner else wrapped

    pruned = rebuilt(model, change)
    _copy_weights(model, pruned)
    return pruned


def strip_pruning(model):
    """A plain copy of a pruned `model`: same weights (pruned ones zero) and outputs, no
    masks or mask constraints, ready for `serving.export_saved_model`."""
    def change(layer, config):
        inner = _inner(layer)
        if not isinstance(inner, PruneLowMagnitude):
            return None
        plain = keras.layers.deserialize(keras.layers.serialize(inner.layer))
        return TimeFolded(plain, name=layer.name) if layer is not inner else plain

    plain = rebuilt(model, change)
    _copy_weights(model, plain)
    return plain


def _zero_smallest(magnitudes, count):
    """A 0/1 mask of the 1-D `magnitudes` zeroing exactly its `count` smallest (among equal
    magnitudes the lower index first, as a stable sort would)."""
    if count == 0:
        return tf.ones_like(magnitudes)
    _, smallest = tf.math.top_k(-magnitudes, k=count)  # ties: lower index first
    return tf.tensor_scatter_nd_update(tf.ones_like(magnitudes), smallest[:, None],
                                       tf.zeros([count], magnitudes.dtype))


def apply_masks(model):
    """Zero the masked weights now (after restoring, or after changing the masks)."""
    for wrapper in pruned_layers(model):
        kernel = wrapper.layer.kernel
        kernel.assign(kernel * tf.cast(wrapper.mask, kernel.dtype))


def prune_to_sparsity(model, sparsity, scope="layer"):
    """Set the masks of a pruned `model` so that a `sparsity` fraction of the weights is zero,
    smallest |w| first.

    scope "layer": every layer reaches `sparsity` on its own; "global": one magnitude ranking
    over all prunable weights, so layers end up with different sparsities. Weights already
    pruned have magnitude 0, so they stay pruned: calling it with a rising sparsity prunes a
    fraction of the remaining weights each time. Returns the sparsity reached per layer.
    """
    _check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}.")
    wrappers = pruned_layers(model)
    if not wrappers:
        raise ValueError("prune_to_sparsity needs a model from prune_low_magnitude.")
    magnitudes = [tf.reshape(tf.abs(tf.cast(w.layer.kernel, tf.float32) * w.mask), [-1])
                  for w in wrappers]
    if scope == "layer":
        masks = [_zero_smallest(m, int(round(sparsity * int(m.shape[0])))) for m in magnitudes]
    else:
        joint = tf.concat(magnitudes, 0)
        joint = _zero_smallest(joint, int(round(sparsity * int(joint.shape[0]))))
        masks = tf.split(joint, [int(m.shape[0]) for m in magnitudes])
    for wrapper, mask in zip(wrappers, masks):
        wrapper.mask.assign(tf.reshape(mask, wrapper.mask.shape))
    apply_masks(model)
    return layer_sparsity(model)


def layer_sparsity(model):
    """The fraction of exactly-zero weights in each pruned kernel, by layer name."""
    return {w.layer.name: float(np.mean(w.layer.kernel.numpy() == 0))
            for w in pruned_layers(model)}


def overall_sparsity(model):
    """The fraction of exactly-zero weights over all pruned kernels."""
    kernels = [w.layer.kernel.numpy() for w in pruned_layers(model)]
    return sum(int(np.sum(k == 0)) for k in kernels) / sum(k.size for k in kernels)


def retraining_schedule(learning_rate, steps_per_round):
    """Cosine decay from `learning_rate` to 0 over each round's `steps_per_round` steps,
    restarting at the full rate every round (Keras' default t_mul=2 would double the second
    round's period, so it ended at half the rate and the third started at half)."""
    return keras.optimizers.schedules.CosineDecayRestarts(
        learning_rate, first_decay_steps=steps_per_round, t_mul=1.0, m_mul=1.0)


class UpdatePruningStep(keras.callbacks.Callback):
    """Follows the schedule of a model from `prune_low_magnitude(model, schedule)`: counts
    optimizer steps and re-prunes the masks when the schedule says so.

    Between re-prunings the kernel constraints keep pruned weights at exactly zero after
    every optimizer step; on training start the masks are applied to the (maybe restored)
    weights.
    """

    def on_train_begin(self, logs=None):
        self.wrappers = pruned_layers(self.model)
        if not self.wrappers or self.wrappers[0].schedule is None:
            raise ValueError("UpdatePruningStep needs a model from prune_low_magnitude(model, "
                             "schedule).")
        apply_masks(self.model)
        self.step = int(self.model.optimizer.iterations.numpy())
        self._maybe_prune()

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        self._maybe_prune()

    def _maybe_prune(self):
        for wrapper in self.wrappers:
            wrapper.pruning_step.assign(self.step)
        due, sparsity = self.wrappers[0].schedule(self.step)
        if due:
            prune_to_sparsity(self.model, sparsity, self.wrappers[0].scope)


class PruningSummaries(SummaryCallback):
    """Adds `sparsity/<layer>` per pruned layer and `sparsity/overall` to each epoch's logs
    and writes them to TensorBoard under `log_dir`."""

    def on_epoch_end(self, epoch, logs=None):
        values = {f"sparsity/{name}": value
                  for name, value in layer_sparsity(self.model).items()}
        values["sparsity/overall"] = overall_sparsity(self.model)
        with self.writer.as_default(step=epoch + 1):
            for name, value in values.items():
                tf.summary.scalar(name, value)
        self.writer.flush()
        if logs is not None:
            logs["sparsity/overall"] = values["sparsity/overall"]
