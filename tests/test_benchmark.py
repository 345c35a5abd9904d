"""The benchmark suite: every figure present and plausible, and the dense ceiling network."""
import json

import numpy as np
import tensorflow as tf

from conftest import run_tool
from tic_tf.models import build_model, lif_layers, relu_twin, run_layers, with_timesteps


def test_relu_twin_is_the_same_network_without_spikes_at_one_timestep():
    model = build_model("resnet19", 10, 4, (32, 32, 3), width=0.0625)
    dense = relu_twin(model)
    assert not lif_layers(dense)
    assert dense.count_params() == model.count_params()
    images = np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)
    # The same graph at T=1 with every LIF layer replaced by a ReLU, run layer by layer.
    one_step = with_timesteps(model, 1)
    expected, _ = run_layers(one_step, images, substitute={
        layer: tf.nn.relu for layer in lif_layers(one_step)})
    np.testing.assert_allclose(dense(images).numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_benchmark_writes_every_figure(tmp_path):
    path = tmp_path / "bench.json"
    result = run_tool("benchmark", "--width=0.0625", "--timesteps=2", "--batch_size=4",
                      "--train_steps=1", "--fisher_samples=8", "--repeats=1", f"--json={path}")
    assert result.returncode == 0, result.stderr
    report = json.loads(path.read_text())
    assert report["machine"]["cpus"] >= 1 and report["batch_size"] == 4
    (run,) = report["runs"]
    for key in ("train_img_s", "infer_img_s", "ceiling_img_s", "fisher_curve_s",
                "pgd10_s_per_img", "pgd10_passes", "peak_memory_mb"):
        assert run[key] > 0, key
    assert run["infer_img_s"] > run["train_img_s"]  # a forward pass costs less than a step
    assert "train_img_s_vs_reference" not in run  # settings differ from the reference's
    assert "| T | train img/s |" in result.stdout


def test_benchmark_refuses_unknown_figures(tmp_path):
    result = run_tool("benchmark", "--skip=train,speed")
    assert result.returncode == 2 and "--skip takes any of" in result.stderr
