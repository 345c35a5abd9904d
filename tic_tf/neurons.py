"""Spiking neurons: leaky (Eq. 1 of the paper; docs/method.md) or non-leaky integrate-and-fire,
hard or soft reset, and a choice of surrogate gradients (`tic_tf.surrogates`)."""
import collections
import math

import keras
import tensorflow as tf

from tic_tf import surrogates
from tic_tf.compiled import function

NEURONS = ("lif", "if")
RESETS = ("hard", "soft")
# Sharpness a of the paper's surrogate arctan(a*x)/pi + 1/2; a = pi gives 1/(1+(pi*x)^2).
DEFAULT_SHARPNESS = surrogates.DEFAULTS["arctan"]


def spike(x, sharpness=None, surrogate="arctan"):
    """Heaviside step forward; the derivative of the `surrogate` of `sharpness` (default: its
    own, `tic_tf.surrogates`) backward. The paper's arctan with a = pi: 1 / (1 + (pi x)^2)."""
    sharpness = surrogates.DEFAULTS[surrogate] if sharpness is None else sharpness

    @tf.custom_gradient
    def heaviside(x):
        def grad(upstream):
            return upstream * surrogates.derivative(surrogate, sharpness, x)

        return tf.cast(x >= 0.0, x.dtype), grad

    return heaviside(x)


def dynamics(neuron, tau):
    """(decay, input gain) of U[t] = decay U[t-1] + gain I[t]: LIF's (1 - 1/tau, 1/tau), Eq. 1;
    IF's (1, 1), which neither leaks nor scales its input (tau unused)."""
    return (1.0 - 1.0 / tau, 1.0 / tau) if neuron == "lif" else (1.0, 1.0)


def check_neuron_args(tau, threshold, surrogate_sharpness=DEFAULT_SHARPNESS, neuron="lif",
                      reset="hard", surrogate="arctan"):
    if neuron not in NEURONS:
        raise ValueError(f"Unknown neuron {neuron!r}; choose one of {', '.join(NEURONS)}.")
    if reset not in RESETS:
        raise ValueError(f"Unknown reset {reset!r}; choose one of {', '.join(RESETS)}.")
    # tau <= 0.5 makes the decay 1 - 1/tau fall below -1, so the membrane diverges.
    if not tau > 0.5:
        raise ValueError(f"tau must be > 0.5 (decay 1 - 1/tau must stay above -1), got {tau}.")
    if not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold}.")
    surrogates.check_surrogate(surrogate, surrogate_sharpness)


@keras.saving.register_keras_serializable(package="tic_tf")
class LIFCell(keras.layers.Layer):
    """One timestep of `units` spiking neurons, a Keras RNN cell: the state is the membrane.

    U[t] = decay U[t-1] + gain I[t] (`dynamics`: LIF's Eq. 1, or IF); O[t] = H(U[t] -
    threshold), differentiated through the `surrogate`; where O[t] = 1 the membrane is reset
    to 0 ("hard") or lowered by the threshold ("soft"), the reset detached from the gradient
    by default. With `units` given it runs inside `keras.layers.RNN` on `[batch, time,
    units]`; the math is elementwise, so `LIF` runs it on feature maps of any shape (units:
    their size). `surrogate_sharpness` None: the surrogate's own default.
    """

    def __init__(self, units=None, tau=2.0, threshold=1.0, detach_reset=True,
                 surrogate_sharpness=None, neuron="lif", reset="hard", surrogate="arctan",
                 **kwargs):
        super().__init__(**kwargs)
        if surrogate_sharpness is None:
            surrogate_sharpness = surrogates.DEFAULTS.get(surrogate, 1.0)
        check_neuron_args(tau, threshold, surrogate_sharpness, neuron, reset, surrogate)
        self.units = None if units is None else int(units)
        self.tau = float(tau)
        self.threshold = float(threshold)
        self.detach_reset = bool(detach_reset)
        self.surrogate_sharpness = float(surrogate_sharpness)
        self.neuron, self.reset, self.surrogate = neuron, reset, surrogate

    @property
    def state_size(self):
        return self.units

    @property
    def output_size(self):
        return self.units

    def build(self, input_shape):
        if self.units is None:
            self.units = math.prod(input_shape[1:])

    def get_initial_state(self, batch_size):
        """A zero membrane for `batch_size` samples."""
        return [tf.zeros((batch_size, self.units), self.compute_dtype)]

    def call(self, inputs, states):
        decay, gain = dynamics(self.neuron, self.tau)
        membrane = decay * states[0] + gain * inputs
        spikes = spike(membrane - self.threshold, self.surrogate_sharpness, self.surrogate)
        reset = tf.stop_gradient(spikes) if self.detach_reset else spikes
        if self.reset == "soft":
            return spikes, [membrane - self.threshold * reset]
        return spikes, [membrane * (1.0 - reset)]

    def get_config(self):
        return {**super().get_config(), "units": self.units, "tau": self.tau,
                "threshold": self.threshold, "detach_reset": self.detach_reset,
                "surrogate_sharpness": self.surrogate_sharpness, "neuron": self.neuron,
                "reset": self.reset, "surrogate": self.surrogate}


def _lif_forward(inputs, membrane, cell, unit):
    """Spikes (in the inputs' dtype) and float32 membranes (before reset) `[batch, T, ...]` of
    the neurons `cell` describes (its parameters only) driven by `inputs` from the kept
    float32 `membrane` `[batch, ...]`, as `cell` computes them step by step, and the membrane
    kept after the last step. `unit`: a run-time 1.0 (why: at `_LIF_FORWARD`)."""
    decay, gain = dynamics(cell.neuron, cell.tau)
    spikes, membranes = [], []
    for t in range(inputs.shape[1]):
        membrane = (decay * membrane + gain * tf.cast(inputs[:, t], tf.float32)) / unit
        fired = membrane >= cell.threshold
        spikes.append(tf.cast(fired, inputs.dtype))
        membranes.append(membrane)
        reset = membrane - cell.threshold if cell.reset == "soft" else tf.zeros_like(membrane)
        membrane = tf.where(fired, reset, membrane)
    return tf.stack(spikes, 1), tf.stack(membranes, 1), membrane


def _lif_backward(upstream, carried, membranes, cell, unit):
    """Gradients of the inputs and of the starting membrane from those of the spikes and of
    the membrane kept after the last step (`carried`): reverse mode through time written out,
    `cell`'s surrogate standing for the step's derivative (LIFCell's gradient), in float32
    whatever the spikes' dtype (the inputs' gradients are returned in it)."""
    decay, gain = dynamics(cell.neuron, cell.tau)
    slopes = surrogates.derivative(cell.surrogate, cell.surrogate_sharpness,
                                   membranes - cell.threshold)
    fired = membranes >= cell.threshold
    gradients = []
    for t in reversed(range(upstream.shape[1])):
        # kept = membrane * (1 - spike) (hard) or membrane - threshold * spike (soft), each
        # through the spike too unless the reset is detached. `carried`: the gradient of the
        # membrane kept after t.
        through_kept = (carried if cell.reset == "soft"
                        else tf.where(fired[:, t], tf.zeros_like(carried), carried))
        membrane = (tf.cast(upstream[:, t], tf.float32) * slopes[:, t] + through_kept) / unit
        if not cell.detach_reset:
            reset_by = cell.threshold if cell.reset == "soft" else membranes[:, t]
            membrane -= reset_by * slopes[:, t] * carried
        gradients.append(tf.cast(gain * membrane, upstream.dtype))
        carried = decay * membrane
    return tf.stack(gradients[::-1], 1), carried


# Each compiled into one fused loop (about 4x faster than one op per step on CPU here), once
# per cell configuration (`_Dynamics`) and shape.
# XLA fuses a chain of cheap elementwise steps into every consumer, so each timestep's
# outputs would recompute (and re-read the inputs of) all earlier steps: O(T^2) work. It does
# not duplicate a division, so every step divides by a 1.0 that XLA only sees at run time:
# exact, and each step is computed once (the forward at T=10 on a [32, T, 32, 32, 32] map
# 18 -> 11 ms here).
_LIF_FORWARD = function(_lif_forward, jit_compile=True)
_LIF_BACKWARD = function(_lif_backward, jit_compile=True)


# A cell's parameters as the compiled loops take them: Python values, so that each loop is
# traced once per configuration.
_Dynamics = collections.namedtuple("_Dynamics", ["tau", "threshold", "detach_reset",
                                                 "surrogate_sharpness", "neuron", "reset",
                                                 "surrogate"])


def lif_run(inputs, membrane, cell, recompute=False):
    """Spikes `[batch, T, ...]` of the neurons `cell` (a LIFCell) describes, driven by `inputs`
    from the kept float32 `membrane` `[batch, ...]` (zeros: at rest), and the membrane kept
    after the last step, so that a run can go on in pieces; forward and backward each one
    XLA-compiled loop over time. The membranes are float32 whatever the inputs' dtype; the
    spikes (0 or 1, exact in any float) and the inputs' gradients come in the inputs' dtype.
    The backward pass keeps the membranes, or with `recompute` only the inputs, recomputing
    the membranes (less memory, one more forward)."""
    cell = _Dynamics(*(getattr(cell, name) for name in _Dynamics._fields))

    @tf.custom_gradient
    def run(inputs, membrane):
        unit = tf.ones([], tf.float32)
        spikes, membranes, kept = _LIF_FORWARD(inputs, membrane, cell, unit)

        def gradient(upstream, upstream_kept):
            if upstream_kept is None:  # not shaped after `membrane`, which the backward
                upstream_kept = tf.zeros_like(upstream[:, 0], tf.float32)  # pass would hold
            through = (_LIF_FORWARD(inputs, membrane, cell, unit)[1] if recompute
                       else membranes)
            return _LIF_BACKWARD(upstream, upstream_kept, through, cell, unit)

        return (spikes, kept), gradient

    return run(inputs, membrane)


@keras.saving.register_keras_serializable(package="tic_tf")
class LIF(keras.layers.Layer):
    """Runs spiking neurons (a LIFCell's parameters: LIF or IF, hard or soft reset, its
    surrogate) over the time axis of `[batch, time, ...]` inputs; returns spikes, through
    `lif_run`.

    Its membranes and surrogate gradients are float32 even under a mixed-precision policy: a
    bfloat16 membrane (8 bits of mantissa) would blur the threshold crossing and the surrogate
    gradient near it. Its inputs and spikes are in the policy's compute dtype, cast inside the
    compiled loop (a pass over the features fewer each way than casting around it).
    With `recompute`, it keeps only its input for the backward pass and recomputes the
    membranes there (gradient checkpointing): less memory for long T, one more LIF forward
    pass per training step, the same values.
    """

    def __init__(self, tau=2.0, threshold=1.0, detach_reset=True, surrogate_sharpness=None,
                 recompute=False, neuron="lif", reset="hard", surrogate="arctan", **kwargs):
        super().__init__(**kwargs)
        self.cell = LIFCell(None, tau, threshold, detach_reset, surrogate_sharpness, neuron,
                            reset, surrogate, name="cell", dtype=self.dtype_policy)
        self.recompute = bool(recompute)

    def build(self, input_shape):
        self.cell.build((input_shape[0], *input_shape[2:]))

    def call(self, inputs):
        if inputs.shape[1] is None:
            raise ValueError("LIF needs a static number of timesteps (axis 1 of the input).")
        return self.run_from(inputs, tf.zeros_like(inputs[:, 0], tf.float32))[0]

    def run_from(self, inputs, membrane):
        """Spikes for `inputs` `[batch, T, ...]` from the kept float32 `membrane`, and the
        membrane kept after (see `lif_run`): the layer's run in pieces, as in
        `tic_tf.models.stepwise`."""
        return lif_run(inputs, membrane, self.cell, self.recompute)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        cell = self.cell
        return {**super().get_config(), "tau": cell.tau, "threshold": cell.threshold,
                "detach_reset": cell.detach_reset,
                "surrogate_sharpness": cell.surrogate_sharpness, "recompute": self.recompute,
                "neuron": cell.neuron, "reset": cell.reset, "surrogate": cell.surrogate}
