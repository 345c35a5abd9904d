"""TensorFlow Lite export, run by the LiteRT interpreter against the Keras model on the
bundled digits' test images."""
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from conftest import assert_fails_cleanly, run_tool
from tic_tf import checkpoints
from tic_tf.data import DataConfig, to_unit_range
from tic_tf.losses import mean_logits
from tic_tf.serving import export_tflite
from tic_tf.training import TrainConfig, train

DIGITS = DataConfig().load()


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """(run directory, model) of a 3-epoch AlexNet on the digits."""
    run_dir = tmp_path_factory.mktemp("tflite") / "run"
    train(TrainConfig(arch="alexnet", width=0.25, timesteps=2, optimizer="adam",
                      learning_rate=0.003, batch_size=32, epochs=3, export=False, verbose=0,
                      model_dir=str(run_dir)))
    return run_dir, checkpoints.load_model(str(run_dir))[0]


def run_tflite(path, images):
    """Probabilities from the LiteRT interpreter, one image per call as on a device."""
    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    return np.concatenate([runner(images=image[None])["probabilities"] for image in images])


def keras_probabilities(model, images):
    logits = mean_logits(model.predict(images, batch_size=120, verbose=0))
    return np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)


def test_the_float32_export_predicts_what_the_keras_model_predicts(digits_model, tmp_path):
    run_dir, model = digits_model
    out = tmp_path / "lite"
    result = run_tool("export", f"--checkpoint={run_dir}", f"--output_dir={out}",
                      "--format=tflite")
    assert result.returncode == 0, result.stderr
    assert f"Exported alexnet at T=2 to {out}/model.tflite (" in result.stdout
    images = to_unit_range(DIGITS.x_test)
    ours, expected = run_tflite(out / "model.tflite", images), keras_probabilities(model, images)
    np.testing.assert_array_equal(ours.argmax(-1), expected.argmax(-1))
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6)
    assert np.mean(expected.argmax(-1) == DIGITS.y_test) > 0.5  # a model that has learnt


def test_int8_weights_are_smaller_and_mostly_agree_with_float32(digits_model, tmp_path):
    _, model = digits_model
    full = export_tflite(model, str(tmp_path / "float32.tflite"))
    small = export_tflite(model, str(tmp_path / "int8.tflite"), int8_weights=True)
    full_size, small_size = (tmp_path / "float32.tflite").stat().st_size, \
        (tmp_path / "int8.tflite").stat().st_size
    assert small_size < full_size / 2.5  # float32 weights to int8, beside the graph
    images = to_unit_range(DIGITS.x_test)
    agreement = np.mean(run_tflite(small, images).argmax(-1)
                        == run_tflite(full, images).argmax(-1))
    # Quantized weights move membranes across the threshold now and then: 93.6% of the
    # predictions agree for this model (docs/performance.md); a broken export agrees ~10%.
    assert agreement >= 0.9, agreement


def test_int8_weights_without_tflite_are_refused(digits_model, tmp_path):
    run_dir, _ = digits_model
    result = run_tool("export", f"--checkpoint={run_dir}", f"--output_dir={tmp_path / 'x'}",
                      "--int8_weights")
    assert_fails_cleanly(result, "--int8_weights applies to --format=tflite only.",
                         tmp_path / "x")
