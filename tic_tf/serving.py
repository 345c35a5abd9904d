"""SavedModel export: a serving signature from images in [0, 1] to class probabilities."""
import os

import tensorflow as tf

from tic_tf.atomic import partial_path, publish_dir
from tic_tf.losses import mean_logits


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
    """Write `model` as a SavedModel at `path` atomically; returns `path`."""
    module = _Serving(model)
    partial = partial_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tf.saved_model.save(module, partial, signatures={"serving_default": module.serve})
    publish_dir(partial, path)
    return path
