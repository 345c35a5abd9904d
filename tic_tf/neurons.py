"""Leaky integrate-and-fire neurons with an arctan surrogate gradient (PAPER.md Eq. 1)."""
import contextlib
import math

import keras
import tensorflow as tf

# Sharpness a of the surrogate arctan(a*x)/pi + 1/2; the paper's a = pi gives 1/(1+(pi*x)^2).
DEFAULT_SHARPNESS = math.pi
_sharpness = [DEFAULT_SHARPNESS]


def spike(x):
    """Heaviside step forward; derivative of arctan(a*x)/pi + 1/2 backward (a = pi).

    The backward pass is (a/pi) / (1 + (a*x)^2); `surrogate_sharpness` changes a while
    graphs are traced, e.g. to attack a model through another surrogate than it trained with.
    """
    sharpness = _sharpness[-1]

    @tf.custom_gradient
    def heaviside(x):
        def grad(upstream):
            return upstream * (sharpness / math.pi) / (1.0 + tf.square(sharpness * x))

        return tf.cast(x >= 0.0, x.dtype), grad

    return heaviside(x)


@contextlib.contextmanager
def surrogate_sharpness(sharpness):
    """Within the block, spikes traced (or run eagerly) use surrogate sharpness `sharpness`."""
    if not sharpness > 0:
        raise ValueError(f"surrogate sharpness must be positive, got {sharpness}.")
    _sharpness.append(float(sharpness))
    try:
        yield
    finally:
        _sharpness.pop()


_recompute = [False]


@contextlib.contextmanager
def recompute_states(enabled=True):
    """Within the block, LIF layers traced keep only their input for the backward pass and
    recompute membranes and spikes there (gradient checkpointing): less memory for long T,
    one more LIF forward pass per step, the same values."""
    _recompute.append(bool(enabled))
    try:
        yield
    finally:
        _recompute.pop()


def _check_neuron_args(tau, threshold):
    # tau <= 0.5 makes the decay 1 - 1/tau fall below -1, so the membrane diverges.
    if not tau > 0.5:
        raise ValueError(f"tau must be > 0.5 (decay 1 - 1/tau must stay above -1), got {tau}.")
    if not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold}.")


@keras.saving.register_keras_serializable(package="tic_tf")
class LIFCell(keras.layers.Layer):
    """One timestep of a LIF neuron; the state is the membrane potential.

    U[t] = (1 - 1/tau) U[t-1] + (1/tau) I[t]; O[t] = spike(U[t] - threshold);
    the membrane is reset to 0 where O[t] = 1 (reset detached from the gradient by default).
    """

    def __init__(self, tau=2.0, threshold=1.0, detach_reset=True, **kwargs):
        super().__init__(**kwargs)
        _check_neuron_args(tau, threshold)
        self.tau = float(tau)
        self.threshold = float(threshold)
        self.detach_reset = bool(detach_reset)

    def get_initial_state(self, inputs):
        """A zero membrane shaped like one timestep of input."""
        return [tf.zeros_like(inputs)]

    def call(self, inputs, states):
        decay = 1.0 - 1.0 / self.tau
        membrane = decay * states[0] + inputs / self.tau
        spikes = spike(membrane - self.threshold)
        reset = tf.stop_gradient(spikes) if self.detach_reset else spikes
        return spikes, [membrane * (1.0 - reset)]

    def get_config(self):
        return {**super().get_config(), "tau": self.tau, "threshold": self.threshold,
                "detach_reset": self.detach_reset}


@keras.saving.register_keras_serializable(package="tic_tf")
class LIF(keras.layers.Layer):
    """Runs a LIFCell over the time axis of `[batch, time, ...]` inputs; returns spikes.

    It computes in float32 even under a mixed-precision policy: a bfloat16 membrane (8 bits
    of mantissa) would blur the threshold crossing and the surrogate gradient near it.
    """

    def __init__(self, tau=2.0, threshold=1.0, detach_reset=True, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.cell = LIFCell(tau, threshold, detach_reset, name="cell", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.cell.build((input_shape[0], *input_shape[2:]))

    def call(self, inputs):
        steps = inputs.shape[1]
        if steps is None:
            raise ValueError("LIF needs a static number of timesteps (axis 1 of the input).")
        return tf.recompute_grad(self._loop)(inputs) if _recompute[-1] else self._loop(inputs)

    def _loop(self, inputs):
        # Only the membrane is carried between steps; the loop is unrolled at trace time.
        per_step = tf.unstack(inputs, axis=1)
        state = self.cell.get_initial_state(per_step[0])
        outputs = []
        for current in per_step:
            out, state = self.cell(current, state)
            outputs.append(out)
        return tf.stack(outputs, axis=1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        cell = self.cell
        return {**super().get_config(), "tau": cell.tau, "threshold": cell.threshold,
                "detach_reset": cell.detach_reset}
