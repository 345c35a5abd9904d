"""What a user sees in TensorBoard: the run's scalars and images, read back through TensorBoard's
own HTTP data API from a real `tensorboard` server, and checked against metrics.jsonl."""
import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

SCALARS_FROM_METRICS = {  # TensorBoard tag -> metrics.jsonl key
    "train/loss": "loss", "train/accuracy": "accuracy", "train/learning_rate": "learning_rate",
    "test/loss": "val_loss", "test/accuracy": "val_accuracy",
    "firing_rate/stem_lif": "firing_rate/stem_lif",
    "timestep_accuracy/upto_1": "timestep_accuracy/upto_1",
    "fisher/I_1": "fisher/I_1", "fisher/I_2": "fisher/I_2", "fisher/centroid": "fisher/centroid",
}
IMAGES = ("fisher/timestep_x_epoch", "fisher/block_x_timestep",
          "firing/layer_x_timestep_moving_statistics",
          "firing/layer_x_timestep_batch_statistics")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port, route, **query):
    url = f"http://127.0.0.1:{port}{route}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


@pytest.fixture
def tensorboard(trained_run):
    _, run_dir, _ = trained_run
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", f"--logdir={run_dir / 'tensorboard'}",
         "--host=127.0.0.1", f"--port={port}", "--load_fast=false", "--reload_interval=1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:  # until the server answers and has read every tag
            try:
                tags = json.loads(get(port, "/data/plugin/scalars/tags"))
                if set(SCALARS_FROM_METRICS) <= set(tags.get(".", {})):
                    break
            except OSError:
                pass
            assert server.poll() is None, server.stderr.read()
            assert time.monotonic() < deadline, "TensorBoard did not serve the run's tags"
            time.sleep(1)
        yield port, run_dir
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_tensorboard_serves_the_scalars_and_images_of_metrics_jsonl(tensorboard):
    port, run_dir = tensorboard
    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    for tag, key in SCALARS_FROM_METRICS.items():
        points = json.loads(get(port, "/data/plugin/scalars/scalars", run=".", tag=tag))
        expected = [(r["epoch"], r[key]) for r in records if key in r]
        assert [step for _, step, _ in points] == [epoch for epoch, _ in expected], tag
        np.testing.assert_allclose([value for _, _, value in points],
                                   [value for _, value in expected], rtol=1e-6, err_msg=tag)
    image_tags = json.loads(get(port, "/data/plugin/images/tags"))["."]
    assert set(IMAGES) <= set(image_tags)
    for tag in IMAGES:
        entries = json.loads(get(port, "/data/plugin/images/images", run=".", tag=tag,
                                 sample=0))
        assert [entry["step"] for entry in entries] == [r["epoch"] for r in records], tag
        png = get(port, "/data/plugin/images/individualImage?" + entries[-1]["query"])
        assert png[:8] == b"\x89PNG\r\n\x1a\n", tag
