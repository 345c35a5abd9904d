"""Where the signal is at each timestep: firing rate per layer and timestep, and accuracy per
timestep, with batch-norm in inference mode (moving statistics) or in training mode (each
batch's own statistics).

Information cannot sit at t = 1 if no spike reaches the classifier at t = 1; these numbers
show at a glance whether it does. With per-timestep batch-norm the two modes can differ
sharply at early timesteps: the moving statistics are a blend over timesteps.
"""
import dataclasses

import keras
import numpy as np
import tensorflow as tf

from tic_tf.losses import accumulated_logits
from tic_tf.models import BN_STATISTICS, lif_layers


@dataclasses.dataclass
class TimestepDiagnostics:
    """firing: {LIF layer: mean spike rate per timestep}; accuracy_upto[t-1]: accuracy of the
    logits accumulated over timesteps 1..t; accuracy_at[t-1]: of timestep t's logits alone."""
    bn_statistics: str
    firing: dict
    accuracy_upto: np.ndarray
    accuracy_at: np.ndarray
    num_samples: int

    def to_json(self):
        # JSON files here are written with sorted keys: "layers" keeps the network's order.
        return {"bn_statistics": self.bn_statistics, "layers": list(self.firing),
                "firing": {k: v.tolist() for k, v in self.firing.items()},
                "accuracy_upto": self.accuracy_upto.tolist(),
                "accuracy_at": self.accuracy_at.tolist(), "num_samples": self.num_samples}


class TimestepProbe:
    """Computes `TimestepDiagnostics` of one model; built once, reused every epoch."""

    def __init__(self, model):
        self.model = model
        layers = lif_layers(model)
        self.names = [layer.name for layer in layers]
        # Called eagerly: a tf.function per probe would be traced anew for every checkpoint
        # analysed, and TensorFlow warns about frequent retracing; the convolutions dominate.
        self.forward = keras.Model(model.input,
                                   [layer.output for layer in layers] + [model.output])

    def __call__(self, images, labels, bn_statistics="moving", batch_size=256):
        """Diagnostics on `images` in [0, 1] with integer `labels`.

        bn_statistics: "moving" (inference mode) or "batch" (training mode: each batch of
        `batch_size` normalised with its own statistics). The model's variables, moving
        statistics included, are left exactly as they were.
        """
        if bn_statistics not in BN_STATISTICS:
            raise ValueError(f"bn_statistics must be one of {BN_STATISTICS}, got "
                             f"{bn_statistics!r}.")
        saved = [v.numpy() for v in self.model.non_trainable_variables]
        spikes, correct_upto, correct_at = 0.0, 0.0, 0.0
        try:
            for begin in range(0, len(images), batch_size):
                *rates, logits = self.forward(images[begin:begin + batch_size],
                                              training=bn_statistics == "batch")
                batch_labels = labels[begin:begin + batch_size]
                count = len(batch_labels)
                spikes = spikes + count * np.stack([
                    tf.reduce_mean(r, axis=[a for a in range(len(r.shape)) if a != 1]).numpy()
                    for r in rates])
                correct_upto += _correct(accumulated_logits(logits), batch_labels)
                correct_at += _correct(logits, batch_labels)
        finally:  # training mode updated the moving statistics: put them back
            for variable, value in zip(self.model.non_trainable_variables, saved):
                variable.assign(value)
        total = len(images)
        return TimestepDiagnostics(bn_statistics, dict(zip(self.names, spikes / total)),
                                   correct_upto / total, correct_at / total, total)


def _correct(logits, labels):
    """Correct predictions per timestep, `[T]`, from logits `[batch, T, classes]`."""
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32).numpy()
    return (predicted == np.asarray(labels)[:, None]).sum(axis=0).astype(np.float64)
