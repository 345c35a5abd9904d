"""Import from the Neuromorphic Intermediate Representation (NIR): a Keras model of tic_tf's
layers from an NIR graph (one tic_tf wrote, or another tool), to evaluate, analyse or
fine-tune here.

The subset that maps onto tic_tf's layers: one `Input` of shape (C, H, W) and one `Output`;
`Conv2d` (any padding; no dilation or groups), `Affine`, `Linear`, `AvgPool2d` (no padding),
`Flatten`, and spiking `LIF` (r=1, v_leak=0, v_reset=0) and `IF` (r=1, v_reset=0) nodes whose
parameters are the same for every neuron of the node. Several edges into one node sum. The
input is presented at every timestep (direct coding), as tic_tf's exports say in their
metadata.
"""
import keras
import nir
import numpy as np

from tic_tf.errors import UserError
from tic_tf.models.layers import RepeatOverTime, TimeFolded
from tic_tf.neurons import LIF


def load(graph, timesteps=None):
    """A `keras.Model` from images `[batch, H, W, C]` to logits `[batch, T, classes]` running
    `graph` (an `nir.NIRGraph` or the path of an NIR file) for T steps: `timesteps`, default
    the graph's metadata's. Raises UserError (a ValueError) naming any node it cannot import."""
    if not isinstance(graph, nir.NIRGraph):
        graph = _read(graph)
    metadata = graph.metadata or {}
    timesteps = timesteps or metadata.get("timesteps")
    if not timesteps:
        raise UserError("The graph's metadata gives no number of timesteps: pass timesteps.")
    unsupported = sorted(f"{name} ({type(node).__name__})" for name, node in graph.nodes.items()
                         if type(node) not in _IMPORTERS and not isinstance(node, nir.Input))
    if unsupported:
        raise UserError(f"NIR nodes tic_tf cannot import: {', '.join(unsupported)}.")
    (input_name, input_node), = _one(graph, nir.Input)
    _one(graph, nir.Output)
    channels, height, width = (int(d) for d in input_node.input_type["input"])
    images = keras.Input((height, width, channels), name="images")
    tensors = {input_name: RepeatOverTime(int(timesteps), name="repeat_over_time")(images)}
    dt = float(np.asarray(metadata.get("dt", 1.0)))
    for name in _topological_order(graph):
        if name == input_name:
            continue
        sources = [tensors[s] for s, d in graph.edges if d == name]
        x = sources[0] if len(sources) == 1 else keras.layers.Add(name=f"{name}_sum")(sources)
        tensors[name] = _IMPORTERS[type(graph.nodes[name])](name, graph.nodes[name], x, dt)
    (output_name, _), = _one(graph, nir.Output)
    return keras.Model(images, tensors[output_name], name="nir")


def _read(path):
    try:
        return nir.read(path)
    except (OSError, KeyError, ValueError) as error:  # h5py's, and NIR's for a bad graph
        raise UserError(f"Cannot read {path} as an NIR graph ({error}); give a file written "
                        "by nir.write (tic_tf.export --format=nir writes one).") from None


def _one(graph, kind):
    found = [(n, node) for n, node in graph.nodes.items() if isinstance(node, kind)]
    if len(found) != 1:
        raise UserError(f"The graph has {len(found)} {kind.__name__} nodes; tic_tf imports "
                         f"graphs with one.")
    return found


def _topological_order(graph):
    remaining = {name: {s for s, d in graph.edges if d == name} for name in graph.nodes}
    order = []
    while remaining:
        ready = [name for name, sources in remaining.items() if not sources]
        if not ready:
            raise UserError(f"The graph has a cycle through {sorted(remaining)}: tic_tf "
                             "imports feed-forward graphs.")
        order += ready
        for name in ready:
            del remaining[name]
        for sources in remaining.values():
            sources.difference_update(ready)
    return order


def _uniform(name, node, field):
    values = np.asarray(getattr(node, field), np.float64)
    if values.size and np.ptp(values) > 0:
        raise UserError(f"{name}: {field} differs between neurons; tic_tf's LIF layers have "
                         "one per layer.")
    return float(values.reshape(-1)[0])


def _require(name, condition, what):
    if not condition:
        raise UserError(f"{name}: {what}, which tic_tf's layers do not have.")


def _conv(name, node, x, dt):
    _require(name, node.groups == 1 and np.all(np.asarray(node.dilation) == 1),
             "grouped or dilated convolution")
    weight = np.asarray(node.weight, np.float32)  # [out, in, kh, kw]
    padding = node.padding
    if isinstance(padding, str):
        _require(name, padding == "valid" or np.all(np.asarray(node.stride) == 1),
                 "strided 'same' padding")
        padding = (0, 0) if padding == "valid" else tuple(k // 2 for k in weight.shape[2:])
    if any(padding):
        x = TimeFolded(keras.layers.ZeroPadding2D(tuple(int(p) for p in padding),
                                                  name=f"{name}_padding"),
                       name=f"{name}_padding_t")(x)
    layer = keras.layers.Conv2D(weight.shape[0], weight.shape[2:], strides=tuple(
        int(s) for s in np.broadcast_to(node.stride, 2)), padding="valid", name=name)
    x = TimeFolded(layer, name=f"{name}_t")(x)
    layer.set_weights([weight.transpose(2, 3, 1, 0), np.asarray(node.bias, np.float32)])
    return x


def _dense(name, node, x, dt):
    weight = np.asarray(node.weight, np.float32)  # [out, in]
    bias = getattr(node, "bias", np.zeros(weight.shape[0]))
    layer = keras.layers.Dense(weight.shape[0], name=name)
    x = TimeFolded(layer, name=f"{name}_t")(x)
    layer.set_weights([weight.T, np.asarray(bias, np.float32)])
    return x


def _average_pool(name, node, x, dt):
    _require(name, not np.any(node.padding), "padded average pooling")
    layer = keras.layers.AveragePooling2D(tuple(int(k) for k in node.kernel_size),
                                          tuple(int(s) for s in node.stride), name=name)
    return TimeFolded(layer, name=f"{name}_t")(x)


def _flatten(name, node, x, dt):
    """NIR flattens (C, H, W) channel first: the Keras (H, W, C) map is permuted first."""
    _require(name, node.start_dim == 0 and node.end_dim == -1, "partial flattening")
    if len(x.shape) == 5:
        x = TimeFolded(keras.layers.Permute((3, 1, 2), name=f"{name}_channels_first"),
                       name=f"{name}_channels_first_t")(x)
    return TimeFolded(keras.layers.Flatten(name=name), name=f"{name}_t")(x)


def _lif(name, node, x, dt):
    """NIR's tau dv/dt = v_leak - v + r I, Euler at dt, is Eq. 1 with tau / dt."""
    _require(name, _uniform(name, node, "r") == 1 and _uniform(name, node, "v_leak") == 0
             and _uniform(name, node, "v_reset") == 0, "r != 1, v_leak != 0 or v_reset != 0")
    return LIF(tau=_uniform(name, node, "tau") / dt,
               threshold=_uniform(name, node, "v_threshold"), name=name)(x)


def _if(name, node, x, dt):
    _require(name, _uniform(name, node, "r") * dt == 1 and _uniform(name, node, "v_reset") == 0,
             "r * dt != 1 or v_reset != 0")
    return LIF(neuron="if", threshold=_uniform(name, node, "v_threshold"), name=name)(x)


def _output(name, node, x, dt):
    return x


_IMPORTERS = {nir.Conv2d: _conv, nir.Affine: _dense, nir.Linear: _dense,
              nir.AvgPool2d: _average_pool, nir.Flatten: _flatten, nir.LIF: _lif, nir.IF: _if,
              nir.Output: _output}
