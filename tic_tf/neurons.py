"""Leaky integrate-and-fire neurons with an arctan surrogate gradient (Eq. 1 of the paper; docs/method.md)."""
import math

import keras
import tensorflow as tf

from tic_tf.compiled import function

# Sharpness a of the surrogate arctan(a*x)/pi + 1/2; the paper's a = pi gives 1/(1+(pi*x)^2).
DEFAULT_SHARPNESS = math.pi


def spike(x, sharpness=DEFAULT_SHARPNESS):
    """Heaviside step forward; derivative of arctan(a*x)/pi + 1/2 backward, a = `sharpness`.

    The backward pass is (a/pi) / (1 + (a*x)^2): the paper's a = pi gives 1 / (1 + (pi x)^2).
    """
    @tf.custom_gradient
    def heaviside(x):
        def grad(upstream):
            return upstream * (sharpness / math.pi) / (1.0 + tf.square(sharpness * x))

        return tf.cast(x >= 0.0, x.dtype), grad

    return heaviside(x)


def _check_neuron_args(tau, threshold, surrogate_sharpness=DEFAULT_SHARPNESS):
    # tau <= 0.5 makes the decay 1 - 1/tau fall below -1, so the membrane diverges.
    if not tau > 0.5:
        raise ValueError(f"tau must be > 0.5 (decay 1 - 1/tau must stay above -1), got {tau}.")
    if not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold}.")
    if not surrogate_sharpness > 0:
        raise ValueError(f"surrogate sharpness must be positive, got {surrogate_sharpness}.")


@keras.saving.register_keras_serializable(package="tic_tf")
class LIFCell(keras.layers.Layer):
    """One timestep of `units` LIF neurons, a Keras RNN cell: the state is the membrane.

    U[t] = (1 - 1/tau) U[t-1] + (1/tau) I[t]; O[t] = spike(U[t] - threshold);
    the membrane is reset to 0 where O[t] = 1 (reset detached from the gradient by default).
    With `units` given it runs inside `keras.layers.RNN` on `[batch, time, units]`; the math
    is elementwise, so `LIF` runs it on feature maps of any shape (units: their size).
    """

    def __init__(self, units=None, tau=2.0, threshold=1.0, detach_reset=True,
                 surrogate_sharpness=DEFAULT_SHARPNESS, **kwargs):
        super().__init__(**kwargs)
        _check_neuron_args(tau, threshold, surrogate_sharpness)
        self.units = None if units is None else int(units)
        self.tau = float(tau)
        self.threshold = float(threshold)
        self.detach_reset = bool(detach_reset)
        self.surrogate_sharpness = float(surrogate_sharpness)

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
        decay = 1.0 - 1.0 / self.tau
        membrane = decay * states[0] + inputs / self.tau
        spikes = spike(membrane - self.threshold, self.surrogate_sharpness)
        reset = tf.stop_gradient(spikes) if self.detach_reset else spikes
        return spikes, [membrane * (1.0 - reset)]

    def get_config(self):
        return {**super().get_config(), "units": self.units, "tau": self.tau,
                "threshold": self.threshold, "detach_reset": self.detach_reset,
                "surrogate_sharpness": self.surrogate_sharpness}


def _lif_forward(inputs, membrane, tau, threshold, unit):
    """Spikes (in the inputs' dtype) and float32 membranes (before reset) `[batch, T, ...]` of
    LIF neurons driven by `inputs` from the kept float32 `membrane` `[batch, ...]`, as LIFCell
    computes them step by step (hard reset to 0), and the membrane kept after the last step.
    `unit`: a run-time 1.0 (why: at `_LIF_FORWARD`)."""
    decay = 1.0 - 1.0 / tau
    spikes, membranes = [], []
    for t in range(inputs.shape[1]):
        membrane = (decay * membrane + tf.cast(inputs[:, t], tf.float32) / tau) / unit
        fired = membrane >= threshold
        spikes.append(tf.cast(fired, inputs.dtype))
        membranes.append(membrane)
        membrane = tf.where(fired, tf.zeros_like(membrane), membrane)
    return tf.stack(spikes, 1), tf.stack(membranes, 1), membrane


def _lif_backward(upstream, carried, membranes, tau, threshold, detach_reset, sharpness, unit):
    """Gradients of the inputs and of the starting membrane from those of the spikes and of
    the membrane kept after the last step (`carried`): reverse mode through time written out,
    the arctan surrogate standing for the step's derivative (LIFCell's gradient), in float32
    whatever the spikes' dtype (the inputs' gradients are returned in it)."""
    decay = 1.0 - 1.0 / tau
    slopes = (sharpness / math.pi) / (1.0 + tf.square(sharpness * (membranes - threshold)))
    fired = membranes >= threshold
    gradients = []
    for t in reversed(range(upstream.shape[1])):
        # kept = membrane * (1 - spike): 0 where the neuron fired; through the spike too
        # unless the reset is detached. `carried`: the gradient of the membrane kept after t.
        membrane = (tf.cast(upstream[:, t], tf.float32) * slopes[:, t]
                    + tf.where(fired[:, t], tf.zeros_like(carried), carried)) / unit
        if not detach_reset:
            membrane -= membranes[:, t] * slopes[:, t] * carried
        gradients.append(tf.cast(membrane / tau, upstream.dtype))
        carried = decay * membrane
    return tf.stack(gradients[::-1], 1), carried


# Each compiled into one fused loop (about 4x faster than one op per step on CPU here).
# XLA fuses a chain of cheap elementwise steps into every consumer, so each timestep's
# outputs would recompute (and re-read the inputs of) all earlier steps: O(T^2) work. It does
# not duplicate a division, so every step divides by a 1.0 that XLA only sees at run time:
# exact, and each step is computed once (the forward at T=10 on a [32, T, 32, 32, 32] map
# 18 -> 11 ms here).
_LIF_FORWARD = function(_lif_forward, jit_compile=True)
_LIF_BACKWARD = function(_lif_backward, jit_compile=True)


def lif_run(inputs, membrane, tau=2.0, threshold=1.0, detach_reset=True,
            surrogate_sharpness=DEFAULT_SHARPNESS, recompute=False):
    """Spikes `[batch, T, ...]` of LIF neurons (Eq. 1) driven by `inputs` from the kept float32
    `membrane` `[batch, ...]` (zeros: at rest), and the membrane kept after the last step, so
    that a run can go on in pieces; forward and backward each one XLA-compiled loop over
    time. The membranes are float32 whatever the inputs' dtype; the spikes (0 or 1, exact in
    any float) and the inputs' gradients come in the inputs' dtype. The backward pass keeps
    the membranes, or with `recompute` only the inputs, recomputing the membranes (less
    memory, one more forward)."""
    @tf.custom_gradient
    def run(inputs, membrane):
        unit = tf.ones([], tf.float32)
        spikes, membranes, kept = _LIF_FORWARD(inputs, membrane, tau, threshold, unit)

        def gradient(upstream, upstream_kept):
            if upstream_kept is None:  # not shaped after `membrane`, which the backward
                upstream_kept = tf.zeros_like(upstream[:, 0], tf.float32)  # pass would hold
            through = (_LIF_FORWARD(inputs, membrane, tau, threshold, unit)[1] if recompute
                       else membranes)
            return _LIF_BACKWARD(upstream, upstream_kept, through, tau, threshold,
                                 detach_reset, surrogate_sharpness, unit)

        return (spikes, kept), gradient

    return run(inputs, membrane)


@keras.saving.register_keras_serializable(package="tic_tf")
class LIF(keras.layers.Layer):
    """Runs LIF neurons (a LIFCell's parameters) over the time axis of `[batch, time, ...]`
    inputs; returns spikes, through `lif_run`.

    Its membranes and surrogate gradients are float32 even under a mixed-precision policy: a
    bfloat16 membrane (8 bits of mantissa) would blur the threshold crossing and the surrogate
    gradient near it. Its inputs and spikes are in the policy's compute dtype, cast inside the
    compiled loop (a pass over the features fewer each way than casting around it).
    With `recompute`, it keeps only its input for the backward pass and recomputes the
    membranes there (gradient checkpointing): less memory for long T, one more LIF forward
    pass per training step, the same values.
    """

    def __init__(self, tau=2.0, threshold=1.0, detach_reset=True,
                 surrogate_sharpness=DEFAULT_SHARPNESS, recompute=False, **kwargs):
        super().__init__(**kwargs)
        self.cell = LIFCell(None, tau, threshold, detach_reset, surrogate_sharpness,
                            name="cell", dtype=self.dtype_policy)
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
        cell = self.cell
        return lif_run(inputs, membrane, cell.tau, cell.threshold, cell.detach_reset,
                       cell.surrogate_sharpness, self.recompute)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        cell = self.cell
        return {**super().get_config(), "tau": cell.tau, "threshold": cell.threshold,
                "detach_reset": cell.detach_reset,
                "surrogate_sharpness": cell.surrogate_sharpness, "recompute": self.recompute}
