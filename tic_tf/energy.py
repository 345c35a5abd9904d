"""Operation counts and energy estimates of a spiking network, per layer and timestep.

A convolution or dense layer fed by spikes performs one accumulate (AC) per spike and per
synapse it reaches: weights are added, never multiplied, and a silent input costs nothing. A
layer outside the time loop (the direct-coding stem, on the image, once per input) or fed by
negative values performs multiply-accumulates (MACs), every one of its products. Counted
exactly from the spikes of given inputs:

- convolution: for every output position, the nonzero inputs in its receptive field, times
  the output channels (a convolution of the nonzero pattern with a kernel of ones);
- dense: the nonzero inputs times the units;
- an input that is an average of spikes (after average pooling, as in VGG16 and the global
  pool before the classifier) counts like spikes: the pooling folds into the weights, so
  every nonzero input still costs one accumulate per synapse;
- a batch-norm that cannot be folded into the layer before it (`time_specific`, `bntt`) costs
  one MAC per element and timestep; the others are folded (`fold_batch_norm`) and cost nothing.

Counted on the network as served (`fold_batch_norm`); the membrane updates of the LIF neurons
are not counted, as is usual in the SNN literature. The equivalent ANN (the same layers at one
timestep with ReLU, `relu_twin`) performs every MAC of every layer once. Energy multiplies the
counts by a table of energies per operation: by default the 45 nm CMOS figures used across the
SNN literature (Horowitz, ISSCC 2014: 0.9 pJ per 32-bit float accumulate, 4.6 pJ per
multiply-accumulate).

    report = operation_counts(model, images)
    report.energy_per_image(ENERGY_TABLES["45nm"])        # picojoules, all T timesteps
    report.energy_per_image(table, exit_timesteps)       # each input up to its exit
"""
import dataclasses

import keras
import numpy as np
import tensorflow as tf

from tic_tf.errors import UserError
from tic_tf.models import TemporalBatchNorm, fold_batch_norm
from tic_tf.models.graph import run_layers
from tic_tf.models.layers import TimeFolded

OPERATIONS = ("accumulate", "multiply_accumulate")
# Picojoules per operation.
ENERGY_TABLES = {"45nm": {"accumulate": 0.9, "multiply_accumulate": 4.6}}


def energy_table(value):
    """A table by name (ENERGY_TABLES), a {operation: picojoules} dict, or the same as text
    ("accumulate=0.9,multiply_accumulate=4.6"), checked."""
    if isinstance(value, str) and "=" in value:
        try:
            value = {name.strip(): float(number) for name, number in
                     (pair.split("=") for pair in value.split(","))}
        except ValueError:
            raise UserError(f"Cannot read the energy table {value!r}; write "
                            "accumulate=PJ,multiply_accumulate=PJ.") from None
    if isinstance(value, str):
        if value not in ENERGY_TABLES:
            raise UserError(f"Unknown energy table {value!r}; use one of "
                            f"{', '.join(ENERGY_TABLES)} or give picojoules per operation, "
                            "e.g. accumulate=0.9,multiply_accumulate=4.6.")
        return ENERGY_TABLES[value]
    missing = [name for name in OPERATIONS if name not in value]
    unknown = [name for name in value if name not in OPERATIONS]
    if missing or unknown:
        raise UserError(f"An energy table needs picojoules for exactly {', '.join(OPERATIONS)}"
                        f"; {'missing ' + ', '.join(missing) if missing else ''}"
                        f"{'; ' if missing and unknown else ''}"
                        f"{'unknown ' + ', '.join(unknown) if unknown else ''}.")
    if any(not np.isfinite(v) or v < 0 for v in value.values()):
        raise UserError("Energies per operation must be non-negative numbers of picojoules.")
    return dict(value)


@dataclasses.dataclass
class LayerOperations:
    """One layer's operations. per_sample: [N, T] counts of `operation` per input and timestep
    (a layer run once per input, as the stem, has its count at t = 1); ann_macs: the
    equivalent ANN layer's MACs per input."""
    name: str
    operation: str
    per_sample: np.ndarray
    ann_macs: int

    def to_json(self):
        return {"name": self.name, "operation": self.operation, "ann_macs": self.ann_macs,
                "per_timestep": self.per_sample.mean(axis=0).tolist()}


@dataclasses.dataclass
class OperationCounts:
    layers: list

    @property
    def timesteps(self):
        return self.layers[0].per_sample.shape[1]

    def per_image(self, exit_timesteps=None):
        """{operation: mean count per input}, over all timesteps or each input's first
        `exit_timesteps` (1-based, [N])."""
        totals = dict.fromkeys(OPERATIONS, 0.0)
        for layer in self.layers:
            counts = layer.per_sample
            if exit_timesteps is not None:
                used = np.arange(1, counts.shape[1] + 1)[None, :] <= np.asarray(
                    exit_timesteps)[:, None]
                counts = counts * used
            totals[layer.operation] += float(counts.sum(axis=1).mean())
        return totals

    def energy_per_image(self, table="45nm", exit_timesteps=None):
        """Mean picojoules per input under `table`."""
        table = energy_table(table)
        return sum(table[name] * count
                   for name, count in self.per_image(exit_timesteps).items())

    def ann_energy_per_image(self, table="45nm"):
        return energy_table(table)["multiply_accumulate"] * sum(
            layer.ann_macs for layer in self.layers if layer.ann_macs)

    def to_json(self, table="45nm"):
        return {"timesteps": self.timesteps, "layers": [l.to_json() for l in self.layers],
                "per_image": self.per_image(), "energy_table_pj": energy_table(table),
                "energy_pj": self.energy_per_image(table),
                "ann_macs": sum(layer.ann_macs for layer in self.layers),
                "ann_energy_pj": self.ann_energy_per_image(table)}


def _nonzero(tensor):
    return tf.cast(tf.not_equal(tensor, 0), tf.float32)


def _receptive_nonzeros(layer, inputs):
    """[images] sum over output positions of the nonzero inputs in each receptive field."""
    if layer.groups != 1 or layer.dilation_rate != (1, 1):
        raise UserError(f"operation_counts supports ungrouped, undilated convolutions; "
                        f"{layer.name} is not.")
    ones = tf.ones((*layer.kernel_size, inputs.shape[-1], 1))
    # The same padding rule as Keras' Conv2D (and PointwiseConv2D, whose strided 1x1 equals it).
    counts = tf.nn.conv2d(_nonzero(inputs), ones, layer.strides, layer.padding.upper())
    return tf.reduce_sum(counts, axis=[1, 2, 3])


def _layer_operations(node, inputs, outputs, timesteps):
    """LayerOperations of one recorded layer, or None for a layer without operations."""
    inner = node.layer if isinstance(node, TimeFolded) else node
    per_timestep = isinstance(node, (TimeFolded, TemporalBatchNorm))  # inputs [N, T, ...]
    batch = tf.shape(inputs)[0]
    if isinstance(inner, (keras.layers.BatchNormalization, TemporalBatchNorm)):
        elements = float(np.prod(outputs.shape[2 if per_timestep else 1:]))
        counts = tf.fill([batch * (timesteps if per_timestep else 1)], elements)
        operation, ann_macs = "multiply_accumulate", 0
    elif isinstance(inner, keras.layers.Conv2D):
        out_h, out_w, filters = outputs.shape[-3:]
        ann_macs = int(out_h * out_w * np.prod(inner.kernel_size) * inputs.shape[-1] * filters)
        images = tf.reshape(inputs, [-1, *inputs.shape[-3:]])
        if not per_timestep or tf.reduce_min(inputs) < 0:  # the image, not spikes: MACs
            counts = tf.fill([tf.shape(images)[0]], float(ann_macs))
            operation = "multiply_accumulate"
        else:
            counts = _receptive_nonzeros(inner, images) * filters
            operation = "accumulate"
    elif isinstance(inner, keras.layers.Dense):
        ann_macs = int(inputs.shape[-1] * inner.units)
        flat = tf.reshape(inputs, [-1, inputs.shape[-1]])
        if not per_timestep or tf.reduce_min(inputs) < 0:
            counts = tf.fill([tf.shape(flat)[0]], float(ann_macs))
            operation = "multiply_accumulate"
        else:
            counts = tf.reduce_sum(_nonzero(flat), axis=-1) * inner.units
            operation = "accumulate"
    else:
        return None
    if per_timestep:
        return operation, tf.reshape(counts, [batch, timesteps]), ann_macs
    # Run once per input (the direct-coding stem): its count at t = 1.
    first = tf.reshape(counts, [batch, 1])
    return operation, tf.pad(first, [[0, 0], [0, timesteps - 1]]), ann_macs


def operation_counts(model, images, batch_size=64):
    """`OperationCounts` of `model` as served (batch-norm folded) on `images` in [0, 1]."""
    served = fold_batch_norm(model)
    timesteps = served.output.shape[1]
    candidates = [node for node in served.layers
                  if isinstance(node.layer if isinstance(node, TimeFolded) else node,
                                (keras.layers.Conv2D, keras.layers.Dense,
                                 keras.layers.BatchNormalization, TemporalBatchNorm))]
    pieces = {node.name: [] for node in candidates}
    ann = {}
    for start in range(0, len(images), batch_size):
        batch = tf.convert_to_tensor(images[start:start + batch_size], tf.float32)
        _, recorded = run_layers(served, batch, record=candidates)
        for node, (inputs, outputs) in zip(candidates, recorded):
            found = _layer_operations(node, tf.cast(inputs, tf.float32), outputs, timesteps)
            if found is not None:
                operation, counts, ann[node.name] = found
                pieces[node.name].append((operation, counts.numpy()))
    return OperationCounts([
        LayerOperations(name, parts[0][0], np.concatenate([c for _, c in parts]), ann[name])
        for name, parts in pieces.items() if parts])
