"""Surrogate gradients: what a spike's step function H(x), x = membrane - threshold, is
differentiated as in the backward pass.

Each is the derivative of a smooth step of sharpness a > 0 whose integral over x is 1 (the
step's jump), so that a only trades width for height; the default a of each makes its peak
at the threshold 1, as the paper's arctan with a = pi:

- arctan: d/dx [arctan(a x) / pi + 1/2] = (a / pi) / (1 + (a x)^2)  (the paper's; default pi)
- sigmoid: d/dx sigmoid(a x) = a s (1 - s), s = sigmoid(a x)  (SpikingJelly's; default 4)
- fast_sigmoid: d/dx [(a x / (1 + a |x|) + 1) / 2] = a / (2 (1 + a |x|)^2)  (SuperSpike,
  Zenke & Ganguli 2018; default 2)
- triangle: a max(0, 1 - a |x|), width 2/a  (piecewise linear, Esser et al. 2016; default 1)
- rectangle: a where |x| < 1 / (2 a), else 0, width 1/a  (Wu et al. 2018; default 1)
"""
import math

import tensorflow as tf

DEFAULTS = {"arctan": math.pi, "sigmoid": 4.0, "fast_sigmoid": 2.0, "triangle": 1.0,
                     "rectangle": 1.0}
SURROGATES = tuple(DEFAULTS)


def check_surrogate(name, sharpness):
    if name not in DEFAULTS:
        raise ValueError(f"Unknown surrogate {name!r}; choose one of {', '.join(SURROGATES)}.")
    if not sharpness > 0:
        raise ValueError(f"surrogate sharpness must be positive, got {sharpness}.")


def derivative(name, sharpness, x):
    """The surrogate `name`'s derivative at `x` (membrane - threshold), in x's dtype."""
    a = tf.cast(sharpness, x.dtype)
    if name == "arctan":
        return (a / math.pi) / (1.0 + tf.square(a * x))
    if name == "sigmoid":
        s = tf.sigmoid(a * x)
        return a * s * (1.0 - s)
    if name == "fast_sigmoid":
        return a / (2.0 * tf.square(1.0 + a * tf.abs(x)))
    if name == "triangle":
        return a * tf.nn.relu(1.0 - a * tf.abs(x))
    if name == "rectangle":
        return tf.where(tf.abs(x) < 0.5 / a, a, tf.zeros_like(x))
    raise ValueError(f"Unknown surrogate {name!r}; choose one of {', '.join(SURROGATES)}.")


def parse(text):
    """A surrogate named on a command line: "a" (a sharpness of the model's own surrogate),
    "name" (that surrogate at its default sharpness) or "name:a", as (name or None, a or None).
    """
    name, _, sharpness = text.rpartition(":") if ":" in text else ("", "", text)
    if not name and sharpness in DEFAULTS:
        name, sharpness = sharpness, ""
    try:
        value = float(sharpness) if sharpness else None
    except ValueError:
        value = -1.0
    if (name and name not in DEFAULTS) or (value is not None and not value > 0):
        raise ValueError(f"{text!r} names no surrogate: give a positive sharpness (e.g. 1.57), "
                         f"a surrogate ({', '.join(SURROGATES)}) or both (e.g. sigmoid:8).")
    return name or None, value


def label(name, sharpness):
    """`parse`'s input back: "name:a", "name" or "a"."""
    return ":".join(part for part in (name, None if sharpness is None else f"{sharpness:g}")
                    if part)
