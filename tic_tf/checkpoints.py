"""Per-epoch checkpoints that describe themselves, written atomically.

A checkpoint is a directory `epoch-NNNN/` holding the TensorFlow checkpoint of the model (and
optimizer, for resuming) and `model.json`, the arguments of `build_model` (and "pruned": true
for a model from `pruning.prune_low_magnitude`, whose masks the checkpoint holds). It is
written under a temporary name and renamed into place, so a killed run never leaves a partial
checkpoint under a real name.
"""
import hashlib
import json
import os
import re
import shutil
import sys

import numpy as np
import tensorflow as tf

from tic_tf.atomic import (RETIRED, partial_path, publish_dir, remove_partials,
                           reporting_full_disk, restore_retired, write_json)
from tic_tf.errors import UserError
from tic_tf.models import build_model, with_timesteps
from tic_tf.pruning import prune_low_magnitude

_NAME = re.compile(r"^epoch-(\d{4,})$")
MODEL_JSON = "model.json"
STATE = "state"


def save(directory, epoch, model, model_config, optimizer=None, extra=None):
    """Write checkpoint `directory/epoch-NNNN` atomically and return its path."""
    return write(os.path.join(directory, f"epoch-{epoch:04d}"), model, model_config, optimizer,
                 extra)


def _objects(model, optimizer, extra):
    objects = {"model": model, **(extra or {})}
    if optimizer is not None:
        objects["optimizer"] = optimizer
    return objects


def write(path, model, model_config, optimizer=None, extra=None):
    """Write a checkpoint directory `path` atomically: model (+ optimizer, + `extra`
    trackables such as pruning masks) and model.json."""
    partial = partial_path(path)
    shutil.rmtree(partial, ignore_errors=True)
    objects = _objects(model, optimizer, extra)
    with reporting_full_disk(path, variable_bytes(model, optimizer),
                             lambda: shutil.rmtree(partial, ignore_errors=True)):
        tf.train.Checkpoint(**objects).write(os.path.join(partial, STATE))
        write_json(os.path.join(partial, MODEL_JSON), model_config)
    publish_dir(partial, path)
    return path


def variable_bytes(model, optimizer=None):
    """Bytes of the model's (and optimizer's) variables: about what a checkpoint takes."""
    variables = list(model.weights) + (list(optimizer.variables) if optimizer else [])
    return sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in variables)


def list_epochs(directory):
    """Complete checkpoints in `directory` as a sorted list of (epoch, path)."""
    if not os.path.isdir(directory):
        return []
    for name in os.listdir(directory):  # a checkpoint whose replacement was cut short
        if name.endswith(RETIRED):
            restore_retired(os.path.join(directory, name[:-len(RETIRED)]))
    found = [(int(m.group(1)), os.path.join(directory, name))
             for name in os.listdir(directory) if (m := _NAME.match(name))]
    return sorted(found)


def remove_stale(directory, keep_epochs, keep_last=2):
    """Delete checkpoints that are neither among the last `keep_last` nor in `keep_epochs`."""
    found = list_epochs(directory)
    recent = {epoch for epoch, _ in found[-keep_last:]}
    for epoch, path in found:
        if epoch not in recent and epoch not in keep_epochs:
            shutil.rmtree(path)
    remove_partials(directory)


def read_model_config(path):
    """The `build_model` arguments stored with checkpoint `path`.

    Checkpoints written before batch-norm had modes pooled statistics over time: they read
    back as batch_norm="shared", with a note."""
    config = _read_json_config(path)
    if "batch_norm" not in config:
        print(f"note: {path} predates batch-norm modes; loading it as batch_norm='shared', "
              "the semantics it was trained with.", file=sys.stderr)
        config["batch_norm"] = "shared"
    return config


def _read_json_config(path):
    config_path = os.path.join(path, MODEL_JSON)
    if not os.path.isfile(config_path) or not os.path.isfile(os.path.join(path, STATE + ".index")):
        raise UserError(f"{path} is not a tic_tf checkpoint (it needs {MODEL_JSON} and "
                        f"{STATE}.index); pass a checkpoint directory epoch-NNNN or a run "
                        "directory holding checkpoints/.")
    try:
        with open(config_path) as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        raise UserError(f"Cannot read {config_path} ({error}).") from error


def check_matches_dataset(config, spec, path):
    """Refuse a checkpoint whose classes or input shape differ from dataset `spec`."""
    if config["num_classes"] != spec.num_classes or \
            tuple(config["input_shape"]) != spec.image_shape:
        raise UserError(f"{path} holds a {config['num_classes']}-class model for "
                        f"{tuple(config['input_shape'])} images, but {spec.name} has "
                        f"{spec.num_classes} classes of {spec.image_shape}; pass the --dataset "
                        "the model was trained on.")


def resolve(path):
    """A checkpoint directory: `path` itself, or the newest one in a run directory."""
    if not os.path.exists(path):
        raise UserError(f"Checkpoint {path} does not exist.")
    if os.path.isfile(os.path.join(path, MODEL_JSON)):
        return path
    for candidate in (path, os.path.join(path, "checkpoints")):
        found = list_epochs(candidate)
        if found:
            return found[-1][1]
    raise UserError(f"No checkpoint found in {path}; pass a directory epoch-NNNN or a run "
                    "directory whose checkpoints/ holds one.")


# What reading a damaged or foreign checkpoint raises: DataLoss or NotFound, unmatched objects,
# wrong shapes.
UNREADABLE = (tf.errors.OpError, AssertionError, ValueError, IndexError)


def restore(path, model, optimizer=None, extra=None):
    """Load weights (optimizer state, `extra` trackables) from checkpoint `path` into
    existing objects."""
    if optimizer is not None:
        optimizer.build(model.trainable_variables)  # create slots so they restore at once
    try:
        status = tf.train.Checkpoint(**_objects(model, optimizer, extra)).read(
            os.path.join(path, STATE))
        status.assert_existing_objects_matched()
        if optimizer is None:
            status.expect_partial()
    except UNREADABLE as error:
        raise UserError(f"Cannot restore checkpoint {path} into this model: "
                        f"{str(error).splitlines()[0]}") from error


def load_model(path, timesteps=None):
    """Rebuild the model a checkpoint describes (optionally at another T) with its weights."""
    path = resolve(path)
    config = read_model_config(path)
    try:
        model = model_from_config(config)
    except (TypeError, ValueError) as error:
        raise UserError(f"{path}/{MODEL_JSON} does not describe a model: {error}") from error
    restore(path, model)
    if timesteps is not None and int(timesteps) != config["timesteps"]:
        model = with_timesteps(model, timesteps)
        config = {**config, "timesteps": int(timesteps)}
    return model, config


def load_models(paths, timesteps=None):
    """(path, model) for each checkpoint in `paths`, as `load_model` gives them, but
    consecutive checkpoints of the same model at their own T restore into one model object:
    the functions compiled for it (Fisher estimator, attacks, probes) are traced once, not once
    per checkpoint. Each model is valid until the next is yielded."""
    model = loaded_config = None
    for path in paths:
        config = read_model_config(path)
        same_t = timesteps is None or int(timesteps) == config["timesteps"]
        if model is not None and same_t and config == loaded_config:
            restore(path, model)
        else:
            model, _ = load_model(path, timesteps)
            loaded_config = config if same_t else None
        yield path, model


def model_from_config(config):
    """The (untrained) model a checkpoint's model.json describes."""
    model = build_model(**{name: value for name, value in config.items() if name != "pruned"})
    return prune_low_magnitude(model) if config.get("pruned") else model


def fingerprint(model):
    """A short SHA-256 of the model's weights: equal only for bit-identical weights."""
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(weights.tobytes())
    return digest.hexdigest()[:16]
