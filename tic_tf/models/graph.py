"""Running a functional model's graph with hooks: record layer tensors, substitute layers."""


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

    def hooked(operation):
        def call(*args, **kwargs):
            if id(operation) in substitute:
                result = substitute[id(operation)](*args)
            else:
                if "training" in getattr(operation, "_call_context_args", {}):
                    kwargs["training"] = training
                result = operation(*args, **kwargs)
            if id(operation) in slots:
                recorded[slots[id(operation)]] = (args[0], result)
            return result
        return call

    # Keras' own graph walker; the hooks are why model.__call__ does not serve here.
    return model._run_through_graph([inputs], operation_fn=hooked), recorded
