"""Training monitors called as Keras calls them, and as a user might (no logs)."""
import json

import keras
import numpy as np

from tic_tf.callbacks import FisherMonitor, MetricsLogger, TimestepMonitor
from tic_tf.diagnostics import TimestepProbe
from tic_tf.fisher import temporal_fisher
from tic_tf.models import build_model


def test_monitors_put_scalars_in_logs_and_records_in_metrics_jsonl(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_model("alexnet", 3, 2, (8, 8, 1), width=1 / 16)
    model.compile(keras.optimizers.SGD(0.1), "mse")  # MetricsLogger reads the learning rate
    rng = np.random.default_rng(0)
    images = rng.random((8, 8, 8, 1), dtype=np.float32)
    labels = rng.integers(0, 3, 8).astype(np.int32)
    monitors = [TimestepMonitor(images, labels, str(tmp_path / "tb")),
                FisherMonitor(images, labels, 1, str(tmp_path / "tb"))]
    logger = MetricsLogger(str(tmp_path), 0, sources=monitors)
    for callback in (*monitors, logger):
        callback.set_model(model)
    logger.on_train_begin()
    logger.on_epoch_begin(0)
    logs = {"loss": 1.5}
    for monitor in monitors:
        monitor.on_epoch_end(0, logs)
    assert all(isinstance(value, float) for value in logs.values())  # Keras logs: scalars
    logger.on_epoch_end(0, logs)
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    expected = temporal_fisher(model, (images, labels), 8, per_layer=True)
    np.testing.assert_allclose(record["fisher"]["fisher"], expected.values, rtol=1e-5)
    assert record["fisher/centroid"] == expected.centroid
    probe = TimestepProbe(model)(images, labels)
    assert record["diagnostics"]["moving"]["accuracy_at"] == probe.accuracy_at.tolist()
    for monitor in monitors:  # called without logs, as a user may: no crash, same record
        monitor.on_epoch_end(1, None)
    np.testing.assert_allclose(monitors[1].records[2]["fisher"]["fisher"], expected.values,
                               rtol=1e-5)
