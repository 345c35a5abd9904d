"""Early-exit (dynamic-timestep) inference: stop each input at the first timestep whose
accumulated prediction is confident enough.

If the information of a trained spiking network sits in its first timesteps, most inputs need
fewer than T of them. A policy reads the softmax of the logits accumulated over 1..t:

- "confidence": its largest probability >= threshold (in (0, 1]);
- "entropy": its entropy (natural log) <= threshold (in [0, ln classes]);
- "margin": its largest minus its second-largest probability >= threshold (in [0, 1]).

Every input stops at T if no earlier t satisfies the policy. The oracle exits each input at the
first t whose accumulated prediction is already its correct final one (inputs wrong at T run to
T): the fewest timesteps any policy could use for the full-T accuracy.

    logits = model.predict(images)                      # [N, T, classes]
    curve = sweep(logits, labels, "confidence", (0.5, 0.9, 0.99))
"""
import dataclasses

import numpy as np

from tic_tf.errors import UserError

POLICIES = ("confidence", "entropy", "margin")


def accumulated_probabilities(logits):
    """[N, T, classes] per-timestep logits -> softmax of their mean over 1..t, for every t."""
    logits = np.asarray(logits, dtype=np.float64)
    steps = np.arange(1, logits.shape[1] + 1, dtype=np.float64)[None, :, None]
    mean = np.cumsum(logits, axis=1) / steps
    shifted = np.exp(mean - mean.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def check_threshold(policy, threshold, num_classes):
    """One clear error for an unknown policy or a threshold outside its range."""
    if policy not in POLICIES:
        raise UserError(f"Unknown early-exit policy {policy!r}; choose one of "
                        f"{', '.join(POLICIES)}.")
    low, high = {"confidence": (0.0, 1.0), "margin": (0.0, 1.0),
                 "entropy": (0.0, float(np.log(num_classes)))}[policy]
    if not (low <= threshold <= high) or (policy == "confidence" and threshold == 0.0):
        raise UserError(f"An early-exit threshold of {threshold:g} is outside the {policy} "
                        f"policy's range [{low:g}, {high:g}] (for {num_classes} classes"
                        f"{'; confidence > 0' if policy == 'confidence' else ''}).")


def satisfied(probabilities, policy, threshold):
    """[N, T] booleans: where the accumulated prediction meets the policy."""
    if policy == "confidence":
        return probabilities.max(axis=-1) >= threshold
    if policy == "entropy":
        entropy = -np.sum(probabilities * np.log(np.maximum(probabilities, 1e-300)), axis=-1)
        return entropy <= threshold
    top2 = np.sort(probabilities, axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0] >= threshold


def exit_timesteps(logits, policy, threshold):
    """[N] 1-based timestep each input exits at: the first t meeting the policy, else T."""
    probabilities = accumulated_probabilities(logits)
    check_threshold(policy, threshold, probabilities.shape[-1])
    met = satisfied(probabilities, policy, threshold)
    met[:, -1] = True
    return np.argmax(met, axis=1) + 1


def predictions_at(logits, timesteps):
    """[N] class predicted from the logits accumulated up to each input's exit timestep."""
    probabilities = accumulated_probabilities(logits)
    return probabilities[np.arange(len(timesteps)), np.asarray(timesteps) - 1].argmax(axis=-1)


def oracle_timesteps(logits, labels):
    """[N] the first t whose accumulated prediction is correct, for inputs correct at T; T for
    the others."""
    predicted = accumulated_probabilities(logits).argmax(axis=-1)  # [N, T]
    correct = predicted == np.asarray(labels)[:, None]
    wrong_at_end = ~correct[:, -1]
    correct[wrong_at_end] = False  # run to T
    correct[wrong_at_end, -1] = True
    return np.argmax(correct, axis=1) + 1


@dataclasses.dataclass
class ExitPoint:
    """One threshold of a sweep: accuracy, mean timesteps, and how many inputs exited at each
    t = 1..T."""
    threshold: float
    accuracy: float
    mean_timesteps: float
    histogram: list

    def to_json(self):
        return dataclasses.asdict(self)


def exit_point(logits, labels, timesteps, threshold=None):
    num_timesteps = np.asarray(logits).shape[1]
    predicted = predictions_at(logits, timesteps)
    return ExitPoint(threshold, float(np.mean(predicted == np.asarray(labels))),
                     float(np.mean(timesteps)),
                     np.bincount(timesteps, minlength=num_timesteps + 1)[1:].tolist())


@dataclasses.dataclass
class ExitCurve:
    """Accuracy against mean timesteps of one policy over thresholds, with the full-T and
    oracle points."""
    policy: str
    points: list
    full: ExitPoint
    oracle: ExitPoint

    def to_json(self):
        return {"policy": self.policy, "points": [p.to_json() for p in self.points],
                "full": self.full.to_json(), "oracle": self.oracle.to_json()}


def sweep(logits, labels, policy, thresholds):
    """The `ExitCurve` of `policy` over `thresholds` for per-timestep `logits` [N, T, C]."""
    logits = np.asarray(logits)
    num_timesteps = logits.shape[1]
    points = [exit_point(logits, labels, exit_timesteps(logits, policy, threshold), threshold)
              for threshold in thresholds]
    full = exit_point(logits, labels, np.full(len(logits), num_timesteps))
    oracle = exit_point(logits, labels, oracle_timesteps(logits, labels))
    return ExitCurve(policy, points, full, oracle)
