"""Export for serving: a SavedModel, or a TensorFlow Lite (LiteRT) flatbuffer for edge devices,
each with one signature from images in [0, 1] to class probabilities and per-timestep logits;
or an NIR graph for neuromorphic hardware and simulators (`tic_tf.nir_export`)."""
import dataclasses
import os
import shutil
import tempfile

import tensorflow as tf

from tic_tf import checkpoints
from tic_tf.atomic import partial_path, publish_dir, reporting_full_disk, write_bytes
from tic_tf.compiled import function
from tic_tf.losses import mean_logits
from tic_tf.nir_export import write_nir
from tic_tf.models import fold_batch_norm
from tic_tf.options import (check_choices, check_paths, check_positive, option, output_dir,
                            require)


FORMATS = ("saved_model", "tflite", "nir")
TFLITE_FILE = "model.tflite"
NIR_FILE = "model.nir"


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Which checkpoint to export, where, in which format and at which T."""
    checkpoint: str = option(None, "Checkpoint directory (epoch-NNNN) or run directory (its "
                             "newest checkpoint is used).", kind=str)
    output_dir: str = output_dir("the SavedModel's files, model.tflite or model.nir")
    format: str = option("saved_model", "saved_model: a SavedModel (TensorFlow Serving, "
                         "TensorFlow); tflite: <output_dir>/model.tflite for TensorFlow Lite "
                         "(LiteRT) on edge devices; nir: <output_dir>/model.nir, the "
                         "Neuromorphic Intermediate Representation (neuromorphic hardware, "
                         "SNN simulators).", choices=FORMATS)
    int8_weights: bool = option(False, "With --format=tflite: weights stored as int8 "
                                "(dynamic-range quantization, about 4x smaller; activations "
                                "stay float32).")
    timesteps: int = option(None, "Inference timesteps baked into the export; default: the "
                            "timesteps the model was trained with.", kind=int)

    def __post_init__(self):
        check_choices(self)
        require(self.checkpoint and self.output_dir, "checkpoint and output_dir are required.")
        require(not self.int8_weights or self.format == "tflite",
                "--int8_weights applies to --format=tflite only.")
        check_paths(self)
        check_positive(self, "timesteps")


class _Serving(tf.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name="images")
        self.serve = function(self._serve, input_signature=[spec])

    def _serve(self, images):
        """Images in [0, 1] -> class probabilities and per-timestep logits."""
        logits = self.model(images, training=False)
        return {"probabilities": tf.nn.softmax(mean_logits(logits)),
                "logits_per_timestep": logits}


def export_saved_model(model, path):
    """Write `model` as a SavedModel at `path` atomically, its batch-norms folded into the
    layers before them where they can be (`tic_tf.models.fold_batch_norm`); returns `path`."""
    module = _Serving(fold_batch_norm(model))
    partial = partial_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with reporting_full_disk(path, checkpoints.variable_bytes(module.model),
                             lambda: shutil.rmtree(partial, ignore_errors=True)):
        tf.saved_model.save(module, partial, signatures={"serving_default": module.serve})
    publish_dir(partial, path)
    return path


def export_tflite(model, path, int8_weights=False):
    """Write `model` as a TensorFlow Lite flatbuffer at `path` atomically: the SavedModel's
    computation and signature (batch-norm folded), its variables frozen into constants, and
    with `int8_weights` its weights quantized to int8. Returns `path`."""
    with tempfile.TemporaryDirectory(prefix="tic_tf-tflite-") as scratch:
        # Converted from a loaded SavedModel's signature, every variable (also those the LIF
        # loops read) becomes a constant; from the Keras model's own function, some stay
        # resource variables that the interpreter leaves unfilled.
        saved = tf.saved_model.load(export_saved_model(model, os.path.join(scratch, "model")))
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [saved.signatures["serving_default"]], saved)
        if int8_weights:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        write_bytes(path, converter.convert())
    return path


def export_checkpoint(config):
    """Export the checkpoint of `config` in `config.format`; returns the written path."""
    model, model_config = checkpoints.load_model(config.checkpoint, timesteps=config.timesteps)
    if config.format == "saved_model":
        path, size = export_saved_model(model, config.output_dir), ""
    else:
        if config.format == "tflite":
            path = export_tflite(model, os.path.join(config.output_dir, TFLITE_FILE),
                                 config.int8_weights)
        else:
            path = write_nir(model, os.path.join(config.output_dir, NIR_FILE))
        size = f" ({os.path.getsize(path) / 1e3:.0f} kB)"
    print(f"Exported {model_config['arch']} at T={model_config['timesteps']} to {path}{size}")
    return path
