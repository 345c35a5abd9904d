"""The benchmark suite: its clocks and memory probe against known values, every figure
written, and the dense ceiling network."""
import json
import os
import re
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import run_tool
from tic_tf import benchmarking, timing
from tic_tf.benchmarking import BenchmarkConfig, StepTimer, add_ratios, benchmark
from tic_tf.errors import UserError
from tic_tf.models import build_model, lif_layers, relu_twin, run_layers, with_timesteps


class FakeClock:
    """perf_counter() that advances only when told to."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def test_median_time_is_the_median_of_the_timed_runs_after_a_warm_up(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(timing, "time", clock)
    durations = iter([9.0, 1.0, 3.0, 2.0])  # the warm-up's 9 s is left out

    def run():
        clock.now += next(durations)

    assert timing.median_time(run, repeats=3) == 2.0


def test_step_timer_measures_from_the_first_to_the_last_step(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(benchmarking, "time", clock)
    timer = StepTimer()
    timer.on_train_begin()
    for now in (5.0, 7.0, 9.5, 12.0):  # the first step's end starts the clock
        clock.now = now
        timer.on_train_batch_end(0, {"loss": 0.0})
    assert timer.seconds_per_step() == pytest.approx((12.0 - 5.0) / 3)


def test_peak_memory_sees_an_allocation_made_inside_it():
    with timing.PeakMemory() as before:
        pass
    with timing.PeakMemory() as peak:
        block = np.ones(256 * 2**20 // 8)  # 256 MB, touched
        del block
    assert peak.mb - before.mb >= 250


def global_policy_name():
    return keras.mixed_precision.global_policy().name


def test_a_fresh_process_starts_from_none_of_this_ones_state():
    """Each benchmark row runs this way: another process, which sees not even a global
    setting made here (the precision policy a row sets)."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        assert timing.in_fresh_process(os.getpid) != os.getpid()
        assert timing.in_fresh_process(global_policy_name) == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_op_profile_counts_every_convolution_and_compiled_lif_loop_of_each_step(tmp_path):
    model = build_model("resnet19", 10, 2, (8, 8, 1), width=0.0625)
    infer = tf.function(lambda images: model(images, training=False))
    images = tf.zeros((2, 8, 8, 1))
    infer(images)  # traced and compiled before the profile
    steps = 2
    _, events = timing.profile_ops(lambda: infer(images).numpy(), steps, str(tmp_path))
    kinds = [kind for _, kind, _ in events]
    convolutions = [layer for layer in model.layers if "conv" in layer.name]
    assert len(convolutions) == 20
    assert sum(kind.endswith("Conv2D") for kind in kinds) == steps * len(convolutions)
    assert kinds.count("XLA") == steps * len(lif_layers(model))  # one forward loop per LIF


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
    assert set(run) == {"precision", "system", "timesteps", "train_img_s", "infer_img_s",
                        "ceiling_img_s", "fisher_curve_s", "pgd10_s_per_img", "pgd10_passes",
                        "peak_memory_mb"}
    assert (run["precision"], run["system"]) == ("none", "tic_tf")
    assert run["infer_img_s"] > run["train_img_s"]  # a forward pass costs less than a step
    assert "| precision | T | system | train img/s |" in result.stdout


FAKE_PEER = """import json, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
amp = args.pop("--amp")
assert args == {"--width": "0.0625", "--timesteps": "2", "--batch": "4", "--fisher_n": "0",
                "--reps": "1", "--step_mode": "m"}, args
print("peer log line")
print(json.dumps({"step_mode": "m", "train_img_s": {"none": 10.0, "bf16": 20.0}[amp],
                  "infer_img_s": 40.0, "fisher_curve_s": 8.0}))
"""


def test_benchmark_times_the_peer_at_the_same_settings_and_divides(tmp_path):
    """A stand-in peer that checks its arguments and reports fixed figures per precision:
    the command passes it tic_tf's settings and the ratios are tic_tf's figures over those
    (skipped on both sides: --fisher_n=0; its ratio, of times, is test_ratios_... below)."""
    (tmp_path / "ref_bench.py").write_text(FAKE_PEER)
    ensure = tmp_path / "ensure-torchenv"
    ensure.write_text(f"#!/bin/sh\necho installing >&2\necho {sys.executable}\n")
    ensure.chmod(0o755)
    path = tmp_path / "bench.json"
    result = run_tool("benchmark", "--width=0.0625", "--timesteps=2", "--batch_size=4",
                      "--train_steps=1", "--fisher_samples=8", "--repeats=1",
                      "--skip=ceiling,pgd,fisher", "--batch_norm=shared",
                      "--mixed_precision=none,bfloat16", f"--peer={tmp_path}", f"--json={path}")
    assert result.returncode == 0, result.stderr
    runs = json.loads(path.read_text())["runs"]
    assert [(r["precision"], r["system"]) for r in runs] == [
        ("none", "tic_tf"), ("none", "peer, m-step"),
        ("bfloat16", "tic_tf"), ("bfloat16", "peer, m-step")]
    for ours, peer_train in ((runs[0], 10.0), (runs[2], 20.0)):
        assert ours["train_img_s_vs_peer"] == pytest.approx(ours["train_img_s"] / peer_train)
        assert ours["infer_img_s_vs_peer"] == pytest.approx(ours["infer_img_s"] / 40.0)
        assert "fisher_curve_vs_peer" not in ours  # not measured here
    assert "| bfloat16 | 2 | peer, m-step | 20.0 | 40.0 |" in result.stdout


def test_a_figure_that_fails_is_reported_and_the_figures_measured_are_kept(tmp_path,
                                                                         monkeypatch):
    """As the exact Fisher failed where a kernel was missing: the figures measured before and
    after it are written, the failure named, and the run ends in an error."""
    def missing_kernel(*args, **kwargs):
        raise tf.errors.InvalidArgumentError(None, None, "filter_size does not have enough "
                                             "elements\n\t[[{{node Conv2DBackpropFilter}}]]")
    monkeypatch.setattr(benchmarking, "temporal_fisher", missing_kernel)
    monkeypatch.setattr(benchmarking, "in_fresh_process", lambda fn, *args: fn(*args))
    path = tmp_path / "bench.json"
    config = BenchmarkConfig(width=0.0625, timesteps=(2,), batch_size=4, fisher_samples=8,
                             repeats=1, skip=("train", "ceiling", "pgd"), json=str(path))
    with pytest.raises(UserError, match=re.escape(
            "some figures could not be measured: T=2 none fisher: InvalidArgumentError: "
            f"filter_size does not have enough elements; the figures measured are in {path}")):
        benchmark(config)
    (run,) = json.loads(path.read_text())["runs"]
    assert set(run) == {"precision", "system", "timesteps", "infer_img_s", "failed"}
    assert run["failed"] == {"fisher": "InvalidArgumentError: filter_size does not have "
                                       "enough elements"}


def test_ratios_to_the_peer_cover_only_the_figures_measured():
    """With --skip=train,infer only the Fisher curve is compared (the peer measures all)."""
    ours = {"fisher_curve_s": 4.0}
    add_ratios(ours, {"train_img_s": 10.0, "infer_img_s": 40.0, "fisher_curve_s": 6.0})
    assert ours == {"fisher_curve_s": 4.0, "fisher_curve_vs_peer": 1.5}


def test_benchmark_refuses_a_peer_directory_without_the_peer(tmp_path):
    result = run_tool("benchmark", f"--peer={tmp_path}")
    assert result.returncode == 2
    assert f"--peer={tmp_path} holds no ref_bench.py" in result.stderr


def test_benchmark_refuses_unknown_figures(tmp_path):
    result = run_tool("benchmark", "--skip=train,speed")
    assert result.returncode == 2
    assert "--skip takes train, infer, ceiling, fisher, pgd; got speed" in result.stderr
