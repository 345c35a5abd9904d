"""A small NumPy simulator of NIR graphs, written from NIR's node definitions and independent
of tic_tf, to check what tic_tf exports: every node runs once per timestep in topological
order, its input the sum of its incoming edges (NIR's convention), spiking nodes integrate
with Euler steps of `dt` and reset to v_reset."""
import nir
import numpy as np


def simulate(graph, images, timesteps, dt=1.0):
    """Run `graph` on `images` `[batch, C, H, W]` presented at each of `timesteps` steps.
    Returns {node name: its outputs `[batch, timesteps, ...]`} for every node."""
    order = _topological_order(graph)
    incoming = {name: [s for s, d in graph.edges if d == name] for name in graph.nodes}
    membranes, outputs = {}, {name: [] for name in order}
    for _ in range(timesteps):
        values = {}
        for name in order:
            node = graph.nodes[name]
            if isinstance(node, nir.Input):
                value = images
            else:
                value = sum(values[source] for source in incoming[name])
                value = _step(name, node, value, membranes, dt)
            values[name] = value
            outputs[name].append(value)
    return {name: np.stack(steps, axis=1) for name, steps in outputs.items()}


def _topological_order(graph):
    remaining = {name: {s for s, d in graph.edges if d == name} for name in graph.nodes}
    order = []
    while remaining:
        ready = sorted(name for name, sources in remaining.items() if not sources)
        assert ready, "the graph has a cycle"
        for name in ready:
            order.append(name)
            del remaining[name]
        for sources in remaining.values():
            sources.difference_update(ready)
    return order


def _step(name, node, x, membranes, dt):
    if isinstance(node, nir.Output):
        return x
    if isinstance(node, nir.Affine):
        return x @ node.weight.T + node.bias
    if isinstance(node, nir.Conv2d):
        return _conv2d(x, node)
    if isinstance(node, nir.AvgPool2d):
        return _pool(x, node) / np.prod(node.kernel_size)
    if isinstance(node, nir.SumPool2d):
        return _pool(x, node)
    if isinstance(node, nir.Flatten):
        start, end = node.start_dim + 1, (node.end_dim % (x.ndim - 1)) + 1  # after the batch
        return x.reshape(*x.shape[:start], -1, *x.shape[end + 1:])
    if isinstance(node, nir.LIF):
        v = membranes.get(name, np.zeros_like(x))
        v = v + dt / node.tau * (node.v_leak - v + node.r * x)
        return _fire(name, node, v, membranes)
    if isinstance(node, nir.IF):
        v = membranes.get(name, np.zeros_like(x)) + dt * node.r * x
        return _fire(name, node, v, membranes)
    raise NotImplementedError(f"{name}: {type(node).__name__}")


def _fire(name, node, v, membranes):
    spikes = (v >= node.v_threshold).astype(v.dtype)  # tic_tf's metadata: fire at >=
    membranes[name] = np.where(spikes > 0, node.v_reset, v)
    return spikes


def _conv2d(x, node):
    assert node.groups == 1 and tuple(np.broadcast_to(node.dilation, 2)) == (1, 1)
    weight = node.weight  # [out, in, kh, kw]
    (ph, pw), (sh, sw) = np.broadcast_to(node.padding, 2), np.broadcast_to(node.stride, 2)
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    kh, kw = weight.shape[2:]
    height, width = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    out = np.zeros((x.shape[0], weight.shape[0], height, width), x.dtype)
    for i in range(kh):
        for j in range(kw):
            window = x[:, :, i:i + sh * height:sh, j:j + sw * width:sw]
            out += np.einsum("bchw,oc->bohw", window, weight[:, :, i, j])
    return out + node.bias.reshape(1, -1, 1, 1)


def _pool(x, node):
    assert not np.any(node.padding)
    (kh, kw), (sh, sw) = node.kernel_size, node.stride
    height, width = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    return sum(x[:, :, i:i + sh * height:sh, j:j + sw * width:sw]
               for i in range(kh) for j in range(kw))
