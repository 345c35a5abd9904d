"""SavedModel export: a serving signature from images in [0, 1] to class probabilities."""
import dataclasses
import os
import shutil

import tensorflow as tf

from tic_tf import checkpoints
from tic_tf.atomic import partial_path, publish_dir, reporting_full_disk
from tic_tf.losses import mean_logits
from tic_tf.models import fold_batch_norm
from tic_tf.options import check_paths, check_positive, option, output_dir, require


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Which checkpoint to export, where, and at which T."""
    checkpoint: str = option(None, "Checkpoint directory (epoch-NNNN) or run directory (its "
                             "newest checkpoint is used).", kind=str)
    output_dir: str = output_dir("the SavedModel's files")
    timesteps: int = option(None, "Inference timesteps baked into the export; default: the "
                            "timesteps the model was trained with.", kind=int)

    def __post_init__(self):
        require(self.checkpoint and self.output_dir, "checkpoint and output_dir are required.")
        check_paths(self)
        check_positive(self, "timesteps")


class _Serving(tf.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name="images")
        self.serve = tf.function(self._serve, input_signature=[spec])

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


def export_checkpoint(config):
    """Export the checkpoint of `config` as a SavedModel; returns its directory."""
    model, model_config = checkpoints.load_model(config.checkpoint, timesteps=config.timesteps)
    export_saved_model(model, config.output_dir)
    print(f"Exported {model_config['arch']} at T={model_config['timesteps']} to "
          f"{config.output_dir}")
    return config.output_dir
