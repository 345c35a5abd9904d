"""Export to the Neuromorphic Intermediate Representation (NIR), the graph format that
neuromorphic hardware toolchains and SNN simulators read (https://neuroir.org).

The graph is the inference network (`tic_tf.models.fold_batch_norm`) at one timestep, in NIR's
channels-first layout; NIR runs it once per timestep. What NIR has no node for is recorded in
the graph's metadata (see `METADATA` and the README): direct coding presents the same image at
every timestep, the prediction is the mean of the output over the timesteps, and a neuron
fires when its membrane reaches the threshold (NIR's LIF fires above it).
"""
import io

import keras
import nir
import numpy as np

from tic_tf.errors import UserError
from tic_tf.atomic import write_bytes
from tic_tf.models import fold_batch_norm, timesteps_of
from tic_tf.models.batch_norm import TemporalBatchNorm
from tic_tf.models.folding import FoldedBatchNorm
from tic_tf.models.graph import input_layers
from tic_tf.models.layers import RepeatOverTime, TimeFolded
from tic_tf.neurons import LIF

# What a backend must do that the graph's nodes do not say, as the graph's metadata.
METADATA = {
    "dt": 1.0,
    "coding": "direct: the input node receives the same image, pixels in [0, 1], at each of "
              "the `timesteps` steps",
    "readout": "the prediction is the mean of the output node over the `timesteps` steps",
    "spike_condition": "a neuron fires when its membrane is >= v_threshold",
    "state": "membranes start at 0 for each image",
}


def to_nir(model):
    """The NIR graph of a tic_tf model in inference: batch-norm folded into the convolution or
    dense layer before it, LIF neurons as NIR `LIF` nodes (tau, r=1, v_leak=0, reset to 0:
    Eq. 1 at dt=1), IF neurons as `IF` nodes, residual additions as several edges into one
    node. Raises UserError (a ValueError) for what NIR cannot express: soft reset, batch-norm
    whose affine changes with t ("time_specific", "bntt"), average pools of odd-sized maps."""
    model = fold_batch_norm(model)
    builder = _GraphBuilder(model)
    for name, sources in input_layers(model).items():
        builder.add(name, sources)
    builder.output(model.layers[-1].name)
    return nir.NIRGraph(builder.nodes, builder.edges,
                        metadata={**METADATA, "timesteps": timesteps_of(model),
                                  "tic_tf_architecture": model.name})


def write_nir(model, path):
    """Write `to_nir(model)` to `path` (NIR's HDF5 file) atomically; returns `path`."""
    graph, buffer = to_nir(model), io.BytesIO()
    nir.write(buffer, graph)
    write_bytes(path, buffer.getvalue())
    return path


class _GraphBuilder:
    """NIR nodes and edges, built layer by layer in the model's topological order.

    `outputs[layer name]` is the list of NIR nodes whose sum is that layer's output: a layer
    NIR needs no node for (folded batch-norm, direct coding) passes its source's list on, and
    an addition is the union of its inputs' lists, so the node after it gets one edge from
    each (NIR's convention for a sum).
    """

    def __init__(self, model):
        self.model = model
        self.nodes, self.edges, self.outputs = {}, [], {}
        self.timed = set()  # layers whose outputs are [batch, time, ...]
        self.flattened = {}  # {Flatten node: the (C, H, W) it flattens}

    def shape(self, name):
        """NIR's (C, H, W) or (units,) of layer `name`'s output at one timestep."""
        shape = [int(d) for d in self.model.get_layer(name).output.shape[1:]]
        if name in self.timed:
            shape = shape[1:]
        return np.array(shape if len(shape) == 1 else (shape[-1], *shape[:-1]))

    def output(self, source):
        self._node("output", nir.Output(output_type={"output": self.shape(source)}),
                   self.outputs[source])

    def _node(self, name, node, sources):
        self.nodes[name] = node
        self.edges += [(source, name) for source in sources]
        return [name]

    def add(self, name, sources):
        layer = self.model.get_layer(name)
        inner = layer.layer if isinstance(layer, TimeFolded) else layer
        if isinstance(inner, RepeatOverTime) or any(s in self.timed for s in sources):
            self.timed.add(name)
        if not sources:
            self.outputs[name] = self._node(name, nir.Input(input_type={
                "input": self.shape(name)}), [])
            return
        nodes = [node for source in sources for node in self.outputs[source]]
        shape = self.shape(sources[0])
        if isinstance(inner, (FoldedBatchNorm, RepeatOverTime, keras.layers.Add)):
            self.outputs[name] = nodes
        elif isinstance(inner, keras.layers.GlobalAveragePooling2D):
            pooled = self._node(f"{name}_pool", _global_pool(shape), nodes)
            self.outputs[name] = self._node(name, _flatten((shape[0], 1, 1)), pooled)
        else:
            node = _node_of(name, inner, shape)
            if isinstance(node, nir.Affine) and len(nodes) == 1 and nodes[0] in self.flattened:
                _reorder_after_flatten(node, self.flattened[nodes[0]])
            if isinstance(node, nir.Flatten):
                self.flattened[name] = shape
            self.outputs[name] = self._node(name, node, nodes)


def _node_of(name, layer, shape):
    """The NIR node of `layer`, whose input at one timestep has NIR shape `shape`."""
    if isinstance(layer, TemporalBatchNorm):
        raise UserError(f"{name}: batch-norm mode {layer.mode!r} normalises each timestep "
                         "differently, which NIR cannot express; export a model trained with "
                         "--batch_norm=per_timestep or shared.")
    if isinstance(layer, keras.layers.Normalization):
        return _normalization(layer, shape)
    if isinstance(layer, keras.layers.Conv2D):
        return _conv(layer, shape)
    if isinstance(layer, keras.layers.Dense):
        return _affine(layer)
    if isinstance(layer, LIF):
        return _neuron(layer, shape)
    if isinstance(layer, keras.layers.AveragePooling2D):
        return _average_pool(name, layer, shape)
    if isinstance(layer, keras.layers.Flatten):
        return _flatten(shape)
    raise UserError(f"{name}: no NIR node for a {type(layer).__name__} layer.")


def _normalization(layer, shape):
    """The input normalisation (x - mean) / std as a 1x1 convolution with a diagonal kernel."""
    mean = np.asarray(keras.ops.convert_to_numpy(layer.mean), np.float32).reshape(-1)
    std = np.sqrt(np.asarray(keras.ops.convert_to_numpy(layer.variance), np.float32)).reshape(-1)
    channels = len(mean)
    weight = np.zeros((channels, channels, 1, 1), np.float32)
    weight[np.arange(channels), np.arange(channels), 0, 0] = 1.0 / std
    return nir.Conv2d(input_shape=tuple(shape[1:]), weight=weight, stride=1, padding=0,
                      dilation=1, groups=1, bias=-mean / std)


def _conv(layer, shape):
    """A convolution with TensorFlow's padding written as NIR's symmetric padding: where
    "same" pads one more row (column) after than before (strided, even-sized input), the
    kernel gains a leading zero row (column) and the padding is the larger side's."""
    kernel = np.asarray(layer.kernel.numpy(), np.float32)  # [kh, kw, in, out]
    if layer.dilation_rate != (1, 1) or layer.groups != 1:
        raise UserError(f"{layer.name}: dilated or grouped convolutions are not exported.")
    padding = []
    for axis, (size, stride) in enumerate(zip(shape[1:], layer.strides)):
        k = kernel.shape[axis]
        if layer.padding == "valid":
            before = after = 0
        else:
            total = max((-(-size // stride) - 1) * stride + k - size, 0)
            before, after = total // 2, total - total // 2
        if after > before:  # TensorFlow pads at most one more after than before
            kernel = np.concatenate([np.zeros_like(kernel.take([0], axis)), kernel], axis)
        padding.append(after)
    bias = (layer.bias.numpy() if layer.use_bias else np.zeros(kernel.shape[-1]))
    return nir.Conv2d(input_shape=tuple(int(d) for d in shape[1:]),
                      weight=np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)),
                      stride=tuple(layer.strides), padding=tuple(padding), dilation=1,
                      groups=1, bias=np.asarray(bias, np.float32))


def _affine(layer):
    bias = layer.bias.numpy() if layer.use_bias else np.zeros(layer.units)
    return nir.Affine(weight=np.ascontiguousarray(layer.kernel.numpy().T),
                      bias=np.asarray(bias, np.float32))


def _reorder_after_flatten(node, shape):
    """Dense weights read Keras' (H, W, C) flattening; NIR's Flatten of (C, H, W) orders the
    same values channel first, so the weight's columns are permuted to match."""
    channels, height, width = (int(d) for d in shape)
    keras_index = np.arange(height * width * channels).reshape(height, width, channels)
    node.weight = np.ascontiguousarray(node.weight[:, keras_index.transpose(2, 0, 1).ravel()])


def _neuron(layer, shape):
    cell = layer.cell
    if cell.reset == "soft":
        raise UserError(f"{layer.name}: NIR's neurons reset to v_reset; a soft reset "
                         "(subtracting the threshold) has no NIR node.")
    full = lambda value: np.full(shape, value, np.float32)  # noqa: E731
    if cell.neuron == "if":
        return nir.IF(r=full(1.0), v_threshold=full(cell.threshold), v_reset=full(0.0))
    # tau dv/dt = -v + I at dt = 1 (Euler): v += (I - v) / tau, Eq. 1.
    return nir.LIF(tau=full(cell.tau), r=full(1.0), v_leak=full(0.0),
                   v_threshold=full(cell.threshold), v_reset=full(0.0))


def _average_pool(name, layer, shape):
    size, strides = tuple(layer.pool_size), tuple(layer.strides)
    if any(d % s for d, s in zip(shape[1:], strides)) or size != strides:
        raise UserError(f"{name}: average pooling of a {shape[1]}x{shape[2]} map in "
                         f"{size} windows pads unevenly, which NIR's pools cannot express; "
                         "export models whose pooled maps have even sizes (32x32 inputs).")
    return nir.AvgPool2d(kernel_size=np.array(size), stride=np.array(strides),
                         padding=np.array((0, 0)))


def _global_pool(shape):
    size = np.array(shape[1:])
    return nir.AvgPool2d(kernel_size=size, stride=size, padding=np.array((0, 0)))


def _flatten(shape):
    return nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1)
