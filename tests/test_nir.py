"""NIR export and import, checked by an independent NumPy simulation of the exported graph
(`nir_simulator`): its spikes at every LIF node and its output equal the Keras model's."""
import io

import keras
import nir
import numpy as np
import pytest
import tensorflow as tf

from conftest import assert_refused, run_tool
from fisher_reference import active_model
from nir_simulator import simulate
from tic_tf import checkpoints, data
from tic_tf.errors import UserError
from tic_tf.models import (TemporalBatchNorm, build_model, lif_layers, timesteps_of,
                           with_timesteps)
from tic_tf.nir_export import METADATA, to_nir, write_nir
from tic_tf.nir_import import load
from tic_tf.serving import ExportConfig, export_checkpoint


def real_images(shape, count=4):
    """The first test digits (scikit-learn's, bundled), scaled up to `shape` and repeated over
    its channels, in [0, 1]."""
    arrays = data.load_arrays(data.get_spec("digits"))
    images = tf.image.resize(data.to_unit_range(arrays.x_test[:count]), shape[:2], "nearest")
    return np.repeat(images.numpy(), shape[2], axis=3)


def firing_model(arch, shape, timesteps=4, **settings):
    """A tiny model at T = `timesteps` with normalised inputs whose every spiking layer fires
    on `real_images(shape)`: its batch-norm statistics are those of these images (one
    training-mode pass at momentum 0) and its offsets 0.8. Returns (model, images)."""
    model = with_timesteps(active_model(arch, shape, **settings), timesteps)
    images = real_images(shape)
    norms = [getattr(layer, "layer", layer) for layer in model.layers]
    norms = [n for n in norms if isinstance(n, (keras.layers.BatchNormalization,
                                                TemporalBatchNorm))]
    for norm in norms:
        norm.momentum = 0.0
    model(images, training=True)
    for norm in norms:
        norm.beta.assign(np.full(norm.beta.shape, 0.8, np.float32))
    return model, images


def keras_spikes(model, images):
    """{LIF layer name: its spikes, channels first `[batch, T, C, H, W]`}, and the logits."""
    layers = lif_layers(model)
    probe = keras.Model(model.input, [layer.output for layer in layers] + [model.output])
    *spikes, logits = probe(images, training=False)
    channels_first = lambda s: s.transpose(0, 1, 4, 2, 3) if s.ndim == 5 else s  # noqa: E731
    return {l.name: channels_first(s.numpy()) for l, s in zip(layers, spikes)}, logits.numpy()


@pytest.mark.numerical
@pytest.mark.parametrize("arch, shape, settings", [
    ("resnet19", (32, 32, 3), {}),
    ("resnet19", (28, 28, 1), {}),  # strided convolutions of odd-sized maps
    ("vgg16", (32, 32, 3), {}),
    ("alexnet", (32, 32, 3), dict(neuron="if", batch_norm="shared")),
])
def test_simulated_nir_graph_fires_as_the_keras_model(arch, shape, settings, tmp_path):
    model, images = firing_model(arch, shape, **settings)
    graph = nir.read(write_nir(model, tmp_path / "model.nir"))
    steps = timesteps_of(model)
    simulated = simulate(graph, images.transpose(0, 3, 1, 2), steps, dt=graph.metadata["dt"])
    spikes, logits = keras_spikes(model, images)
    for name, expected in spikes.items():
        assert 0.05 < expected.mean() < 0.75, name  # neither silent nor saturated
        np.testing.assert_array_equal(simulated[name], expected, err_msg=name)
    np.testing.assert_allclose(simulated["output"], logits, atol=1e-5)
    # Imported back into tic_tf, the graph is the same network.
    np.testing.assert_allclose(load(graph)(images, training=False), logits, atol=1e-5)


@pytest.mark.parametrize("tau", [0.75, 2.0, 4.0])
def test_graph_records_eq_1_and_what_its_nodes_do_not_say(tau):
    graph = nir.read(io.BytesIO(_written(to_nir(active_model("alexnet", (32, 32, 3), tau=tau)))))
    assert graph.metadata == {**METADATA, "timesteps": 3, "tic_tf_architecture": "alexnet"}
    assert {type(node).__name__ for node in graph.nodes.values()} == {
        "Input", "Conv2d", "LIF", "AvgPool2d", "Flatten", "Affine", "Output"}
    for name in ("stem_lif", "fc2_lif"):
        node, dt = graph.nodes[name], graph.metadata["dt"]
        # NIR's tau dv/dt = v_leak - v + r I, one Euler step: v <- (1 - dt/tau) v + dt r I/tau.
        np.testing.assert_allclose(1 - dt / node.tau, 1 - 1 / tau, rtol=1e-6)  # Eq. 1's decay
        np.testing.assert_allclose(dt * node.r / node.tau, 1 / tau, rtol=1e-6)  # input scale
        np.testing.assert_array_equal(node.v_leak, 0.0)
        np.testing.assert_array_equal(node.v_reset, 0.0)
        np.testing.assert_array_equal(node.v_threshold, 1.0)
    assert graph.nodes["stem_lif"].tau.shape == (4, 32, 32)  # channels first


def _written(graph):
    buffer = io.BytesIO()
    nir.write(buffer, graph)
    return buffer.getvalue()


@pytest.mark.parametrize("settings, shape, message", [
    (dict(reset="soft"), (32, 32, 3),
     "stem_lif: NIR's neurons reset to v_reset; a soft reset"),
    (dict(batch_norm="time_specific"), (32, 32, 3),
     "features1_bn: batch-norm mode 'time_specific' normalises each timestep differently"),
    ({}, (28, 28, 1), "pool3_t: average pooling of a 7x7 map in (2, 2) windows pads unevenly"),
])
def test_what_nir_cannot_express_is_refused_with_the_layer(settings, shape, message, tmp_path):
    model = active_model("alexnet", shape, **settings)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        write_nir(model, tmp_path / "model.nir")
    assert not list(tmp_path.iterdir())


def test_import_refuses_nodes_and_parameters_it_cannot_map():
    graph = to_nir(active_model("alexnet", (32, 32, 3)))
    graph.nodes["fc1_lif"] = nir.CubaLIF(**{k: np.ones(12) for k in (
        "tau_syn", "tau_mem", "r", "v_threshold")}, v_leak=np.zeros(12))
    with pytest.raises(UserError, match=r"NIR nodes tic_tf cannot import: fc1_lif \(CubaLIF\)"):
        load(graph)
    graph = to_nir(active_model("alexnet", (32, 32, 3)))
    graph.nodes["fc2_lif"].tau[0] = 3.0
    with pytest.raises(UserError, match="fc2_lif: tau differs between neurons"):
        load(graph)


def test_import_refuses_a_file_that_is_not_an_nir_graph(tmp_path):
    path = tmp_path / "model.nir"
    path.write_bytes(b"not HDF5")
    with pytest.raises(UserError, match=f"Cannot read {path} as an NIR graph"):
        load(str(path))


def test_export_command_writes_a_graph_that_predicts_as_the_checkpoint(trained_run, tmp_path):
    npz, run_dir, _ = trained_run
    result = run_tool("export", f"--checkpoint={run_dir}", f"--output_dir={tmp_path}",
                      "--format=nir")
    assert result.returncode == 0, result.stderr
    path = tmp_path / "model.nir"
    assert f"to {path} (" in result.stdout
    model, _ = checkpoints.load_model(str(run_dir))
    images = np.load(npz)["x_test"][:8].astype(np.float32) / 255
    graph = nir.read(path)
    simulated = simulate(graph, images.transpose(0, 3, 1, 2), graph.metadata["timesteps"])
    np.testing.assert_allclose(simulated["output"], model(images, training=False), atol=1e-5)
    assert int(graph.metadata["timesteps"]) == 2


def test_export_command_refuses_a_soft_reset_checkpoint_before_writing(tmp_path):
    settings = dict(arch="alexnet", num_classes=5, timesteps=2, input_shape=[32, 32, 3],
                    width=1 / 16, batch_norm="per_timestep", reset="soft")
    checkpoint = checkpoints.write(str(tmp_path / "epoch-0001"), build_model(**settings),
                                   settings)
    out = tmp_path / "exported"
    assert_refused(ExportConfig, export_checkpoint, [
        f"--checkpoint={checkpoint}", f"--output_dir={out}", "--format=nir"],
        "stem_lif: NIR's neurons reset to v_reset; a soft reset", out / "model.nir")
