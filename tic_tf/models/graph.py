"""Running a functional model's graph with hooks: record layer tensors, substitute layers.

The graph is read from the model's config, Keras' documented serialised form, in which every
layer lists the layer outputs it is called on (`inbound_nodes`, topologically ordered); no
Keras internals are involved.
"""
import inspect


def run_layers(model, inputs, substitute=None, record=(), training=False):
    """`model(inputs, training)`, computed layer by layer, plus two hooks.

    substitute: {layer: fn} calls `fn(*args)` instead of the layer.
    record: layers (substituted or not) whose (input, output) tensors are returned, in order;
    these are the very tensors the rest of the network consumes, so gradients reach them (a
    probe model's extra outputs are copies, which gradients do not reach).
    Returns (outputs, [(input, output) per recorded layer]).
    """
    substitute = {id(layer): fn for layer, fn in (substitute or {}).items()}
    slots = {id(layer): i for i, layer in enumerate(record)}
    recorded = [None] * len(slots)
    config = model.get_config()
    tensors = {_history(config["input_layers"]): inputs}
    for layer_config in config["layers"]:
        layer = model.get_layer(layer_config["name"])
        for index, node in enumerate(layer_config["inbound_nodes"]):
            args = _resolve(node["args"], tensors)
            kwargs = _resolve(node["kwargs"], tensors)
            if id(layer) in substitute:
                result = substitute[id(layer)](*args)
            else:
                if "training" in inspect.signature(layer.call).parameters:
                    kwargs["training"] = training
                result = layer(*args, **kwargs)
            if id(layer) in slots:
                recorded[slots[id(layer)]] = (args[0], result)
            for position, tensor in enumerate(result if isinstance(result, (list, tuple))
                                              else [result]):
                tensors[(layer.name, index, position)] = tensor
    return tensors[_history(config["output_layers"])], recorded


def _history(endpoint):
    """(layer name, node index, tensor index) of the model's one input or output."""
    if endpoint and isinstance(endpoint[0], list):
        if len(endpoint) != 1:
            raise ValueError("run_layers supports models with one input and one output.")
        endpoint = endpoint[0]
    return tuple(endpoint)


def input_layers(model):
    """{layer name: names of the layers whose outputs it is called on}, from the config."""
    sources = {}
    for layer_config in model.get_config()["layers"]:
        names = sources.setdefault(layer_config["name"], [])
        for node in layer_config.get("inbound_nodes", []):  # none: not a functional model
            _map_keras_tensors(node["args"], lambda history: names.append(history[0]))
    return sources


def _resolve(value, tensors):
    """`value` (a node's serialised arguments) with every Keras tensor replaced by the tensor
    computed for it."""
    return _map_keras_tensors(value, lambda history: tensors[tuple(history)])


def _map_keras_tensors(value, fn):
    """`value` (serialised node arguments) with every Keras tensor replaced by
    `fn(its keras_history)`: (layer name, node index, tensor index)."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            return fn(value["config"]["keras_history"])
        return {key: _map_keras_tensors(item, fn) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_map_keras_tensors(item, fn) for item in value]
    return value
