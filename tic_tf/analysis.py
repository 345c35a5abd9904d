"""Temporal information analysis of one or many checkpoints of a run.

    from tic_tf.analysis import AnalysisConfig, analyze
    analyze(AnalysisConfig(checkpoints=("runs/quick_cpu",), output_dir="analysis/quick_cpu"))

`checkpoints` takes checkpoint directories (epoch-NNNN) and run directories (all their
checkpoints). Writes, into `output_dir`:
  fisher.json            per checkpoint: epoch, I_1..I_T, information centroid, per-block I_t
  fisher_curves.png      I_t per checkpoint          centroid.png   IC against epoch
  layer_heatmap.png      block x timestep Fisher of the last checkpoint (rows normalised)
  windows.json, window_deficits.png   with analyses=...,windows: accuracy with Gaussian
                         noise only during timesteps [t, t+w-1], relative to the last window
  diagnostics.json, firing_<moving|batch>_statistics.png, timestep_accuracy.png   with
                         analyses=...,diagnostics: spike rate per layer and timestep and
                         accuracy per timestep on the test images, batch-norm in inference
                         mode (moving statistics) and in training mode (batch statistics)
  fisher_and_timestep_accuracy.png   with both: the last checkpoint's I_t beside its
                         accuracy per timestep
"""
import dataclasses
import os
import re

import numpy as np

from tic_tf import checkpoints, plots
from tic_tf.atomic import write_json
from tic_tf.data import DataConfig, to_unit_range
from tic_tf.diagnostics import TimestepProbe
from tic_tf.fisher import LABEL_MODES, METHODS, temporal_fisher
from tic_tf.kernels import ONEDNN_VARIABLE
from tic_tf.models import BN_STATISTICS
from tic_tf.options import (check_choices, check_paths, check_positive, eval_samples, nested,
                            option, output_dir, require, run_timesteps, seed, xla)
from tic_tf.windows import window_accuracies

ANALYSES = ("fisher", "windows", "diagnostics")


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
    """Which checkpoints to analyse, and how."""
    checkpoints: tuple = option((), "Checkpoint directories and/or run directories.")
    output_dir: str = output_dir("the JSON files and plots")
    data: DataConfig = nested(DataConfig)
    analyses: tuple = option(("fisher",), "Any of: fisher, windows, diagnostics.",
                             choices=ANALYSES)
    split: str = option("train", "Samples for the Fisher measurement.",
                        choices=["train", "test"])
    num_samples: int = option(256, "Samples for the Fisher measurement.")
    labels: str = option("data", "data: empirical Fisher (Eq. 6); model: labels drawn from "
                         "the model's prediction (Eq. 5).", choices=LABEL_MODES)
    method: str = option("exact", "exact: per-sample gradients (Eq. 6); batch_mean: the "
                         "reference code's batch approximation.", choices=METHODS)
    bn_statistics: str = option("moving", "Batch-norm statistics of the Fisher measurement: "
                                "moving (inference mode, as the reference) or batch (each "
                                "batch's own moments, as in training; held constant by the "
                                "exact estimator).", choices=BN_STATISTICS)
    batch_size: int = option(32, "Batch size of the measurements.")
    timesteps: int = run_timesteps()
    window: int = option(3, "Width of the noisy window of timesteps.")
    noise: float = option(0.5, "Window noise: l2 norm as a fraction of the image's norm.")
    eval_samples: int = eval_samples()
    seed: int = seed("model-drawn labels and noise")
    xla: bool = xla(False, "On CPU the Fisher estimator runs 2-3x slower with it "
                    "(docs/performance.md).")

    def __post_init__(self):
        check_choices(self)
        check_paths(self)
        require(self.checkpoints and self.output_dir, "checkpoints and output_dir are "
                "required.")
        check_positive(self, "num_samples", "batch_size", "timesteps", "window",
                       "eval_samples")
        require(self.noise >= 0, "--noise must be >= 0.")


def expand_checkpoints(paths):
    """Checkpoint directories, run directories expanded to all their checkpoints."""
    found = []
    for path in paths:
        listed = checkpoints.list_epochs(os.path.join(path, "checkpoints"))
        found += [p for _, p in listed] if listed else [checkpoints.resolve(path)]
    return found


def epoch_of(path):
    match = re.search(r"epoch-(\d+)$", os.path.normpath(path))
    return int(match.group(1)) if match else None


def analyze(config):
    """Run the analyses of `config` over its checkpoints and write their files; returns the
    per-checkpoint rows of each analysis by name ("fisher", "windows", "diagnostics")."""
    paths = expand_checkpoints(config.checkpoints)
    for path in paths:
        checkpoints.check_matches_dataset(checkpoints.read_model_config(path),
                                          config.data.spec, path)
    arrays = config.data.load()
    images, labels = ((arrays.x_train, arrays.y_train) if config.split == "train"
                      else (arrays.x_test, arrays.y_test))
    test_images = to_unit_range(arrays.x_test[:config.eval_samples])
    test_labels = arrays.y_test[:config.eval_samples]

    fisher_rows, window_rows, diagnostic_rows = [], [], []
    for path, model in checkpoints.load_models(paths, config.timesteps):
        epoch = epoch_of(path)
        if "fisher" in config.analyses:
            result = temporal_fisher(model, (images, labels), config.num_samples,
                                     labels=config.labels, per_layer=config.method == "exact",
                                     batch_size=config.batch_size, method=config.method,
                                     seed=config.seed, jit_compile=config.xla,
                                     bn_statistics=config.bn_statistics)
            if not fisher_rows and result.conv_routes:
                print("Per-sample convolution gradients by route: "
                      + ", ".join(f"{route} {count}" for route, count in
                                  result.conv_routes.items())
                      + f" ({ONEDNN_VARIABLE}={os.environ.get(ONEDNN_VARIABLE, 'unset')}; "
                      "grouped needs oneDNN's kernels or a GPU)", flush=True)
            fisher_rows.append({"checkpoint": path, "epoch": epoch, **result.to_json()})
            print(f"{path}: IC {result.centroid:.3f}, I_t "
                  f"{np.array2string(result.values, precision=4)}", flush=True)
        if "windows" in config.analyses:
            windows = window_accuracies(model, test_images, test_labels, config.window,
                                        config.noise, config.seed, config.batch_size)
            window_rows.append({"checkpoint": path, "epoch": epoch, **windows})
            print(f"{path}: accuracy with noise in windows starting at {windows['starts']}: "
                  f"{np.round(windows['accuracy'], 3).tolist()}", flush=True)
        if "diagnostics" in config.analyses:
            probe = TimestepProbe(model)
            results = {mode: probe(test_images, test_labels, mode, config.batch_size * 8)
                       for mode in BN_STATISTICS}
            diagnostic_rows.append({"checkpoint": path, "epoch": epoch,
                                    **{m: r.to_json() for m, r in results.items()}})
            for mode, result in results.items():
                print(f"{path}: {mode} statistics, accuracy from timestep t alone "
                      f"{np.round(result.accuracy_at, 3).tolist()}, deepest layer fires "
                      f"{np.round(list(result.firing.values())[-1], 4).tolist()}", flush=True)

    out = config.output_dir
    os.makedirs(out, exist_ok=True)
    settings = {"dataset": config.data.dataset, **{
        name: getattr(config, name) for name in (
            "split", "num_samples", "labels", "method", "bn_statistics", "timesteps", "window",
            "noise", "seed")}}
    if fisher_rows:
        write_json(os.path.join(out, "fisher.json"), {"settings": settings,
                                                      "checkpoints": fisher_rows})
        names = [f"epoch {r['epoch']}" if r["epoch"] else r["checkpoint"] for r in fisher_rows]
        plots.fisher_curves({n: r["fisher"] for n, r in zip(names, fisher_rows)},
                            os.path.join(out, "fisher_curves.png"))
        plots.centroids([r["epoch"] or i for i, r in enumerate(fisher_rows, 1)],
                        [r["centroid"] for r in fisher_rows], os.path.join(out, "centroid.png"))
        last = fisher_rows[-1]
        if last["per_layer"]:
            blocks = np.array(list(last["per_layer"].values()))
            plots.heatmap(blocks / np.maximum(blocks.max(axis=1, keepdims=True), 1e-30),
                          list(last["per_layer"]), range(1, blocks.shape[1] + 1),
                          os.path.join(out, "layer_heatmap.png"), xlabel="timestep",
                          title=f"Fisher per block (row-normalised), {names[-1]}")
    if window_rows:
        write_json(os.path.join(out, "windows.json"), {"settings": settings,
                                                       "checkpoints": window_rows})
        last = window_rows[-1]
        relative = last["relative_to_last"] is not None
        plots.window_deficits(last["starts"], last["relative_to_last" if relative else "accuracy"],
                              os.path.join(out, "window_deficits.png"), config.window,
                              relative=relative)
    if diagnostic_rows:
        write_json(os.path.join(out, "diagnostics.json"), {"settings": settings,
                                                           "checkpoints": diagnostic_rows})
        last = diagnostic_rows[-1]
        name = f"epoch {last['epoch']}" if last["epoch"] else last["checkpoint"]
        for mode in BN_STATISTICS:
            firing = {layer: np.array(rates) for layer, rates in last[mode]["firing"].items()}
            plots.firing_heatmap(firing, f"spike rate, {mode} statistics, {name}",
                                 os.path.join(out, f"firing_{mode}_statistics.png"))
        plots.timestep_accuracy({mode: last[mode] for mode in BN_STATISTICS},
                                os.path.join(out, "timestep_accuracy.png"), name)
        if fisher_rows:  # where the information sits beside what each timestep predicts
            figure = plots.Panels(2)
            figure.fisher_curves({name: fisher_rows[-1]["fisher"]},
                                 f"I_t, {config.bn_statistics} statistics")
            figure.timestep_accuracy({mode: last[mode] for mode in BN_STATISTICS}, name)
            figure.save(os.path.join(out, "fisher_and_timestep_accuracy.png"))
    print(f"Results written to {out}")
    rows = {"fisher": fisher_rows, "windows": window_rows, "diagnostics": diagnostic_rows}
    return {name: rows[name] for name in config.analyses}


