"""TensorFlow Lite exports of a checkpoint against its Keras model, as on an edge device.

    python scripts/measure_tflite.py --checkpoint=runs/quick_cpu --json=tflite.json

Exports the checkpoint as float32 and as int8-weight TFLite files and reports, for each on
the data set's test images (one image per call, the LiteRT interpreter): the file size, the
median single-image latency, the accuracy and the share of predictions equal to the Keras
model's; the Keras model's own single-image latency (a compiled call) beside them.
"""
import json
import os
import tempfile
import time

from tic_tf import cli  # noqa: F401  (first: the commands' environment, before TensorFlow)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from tic_tf import checkpoints  # noqa: E402
from tic_tf.data import DataConfig, to_unit_range  # noqa: E402
from tic_tf.losses import mean_logits  # noqa: E402
from tic_tf.serving import export_tflite  # noqa: E402
from tic_tf.timing import machine  # noqa: E402

flags.DEFINE_string("checkpoint", None, "Checkpoint or run directory.", required=True)
flags.DEFINE_string("dataset", "digits", "Data set of the checkpoint.")
flags.DEFINE_string("data_file", None, "Its .npz, if not the bundled digits or TFDS.")
flags.DEFINE_integer("latency_images", 200, "Images timed one at a time.")
flags.DEFINE_string("json", None, "Also write the figures here.")
FLAGS = flags.FLAGS


def median_latency_ms(predict, images):
    predict(images[:1])  # warm-up
    times = []
    for image in images:
        started = time.perf_counter()
        predict(image[None])
        times.append(time.perf_counter() - started)
    return 1e3 * float(np.median(times))


def main(argv):
    del argv
    model, model_config = checkpoints.load_model(FLAGS.checkpoint)
    arrays = DataConfig(dataset=FLAGS.dataset, data_file=FLAGS.data_file).load()
    images, labels = to_unit_range(arrays.x_test), arrays.y_test
    compiled = tf.function(lambda x: mean_logits(model(x, training=False)))
    keras_predicted = np.argmax(compiled(images).numpy(), -1)
    report = {"checkpoint": FLAGS.checkpoint, "model": model_config, "machine": machine(xla=False),
              "test_images": len(images),
              "keras": {"accuracy": float(np.mean(keras_predicted == labels)),
                        "latency_ms": median_latency_ms(compiled,
                                                        images[:FLAGS.latency_images])}}
    with tempfile.TemporaryDirectory() as scratch:
        for name, int8 in (("float32", False), ("int8_weights", True)):
            path = export_tflite(model, os.path.join(scratch, f"{name}.tflite"), int8)
            runner = Interpreter(model_path=path).get_signature_runner("serving_default")

            def predict(batch):
                return runner(images=batch)["probabilities"]

            predicted = np.array([np.argmax(predict(image[None])) for image in images])
            report[name] = {"size_kb": os.path.getsize(path) / 1e3,
                            "accuracy": float(np.mean(predicted == labels)),
                            "agreement_with_keras": float(np.mean(predicted == keras_predicted)),
                            "latency_ms": median_latency_ms(predict,
                                                            images[:FLAGS.latency_images])}
    print(json.dumps(report, indent=2))
    if FLAGS.json:
        with open(FLAGS.json, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    app.run(main)
