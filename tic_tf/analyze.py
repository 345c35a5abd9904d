"""Temporal information analysis of one or many checkpoints of a run.

    python -m tic_tf.analyze --checkpoints=runs/quick_cpu --output_dir=analysis/quick_cpu

--checkpoints takes checkpoint directories (epoch-NNNN) and run directories (all their
checkpoints). Writes, into --output_dir:
  fisher.json            per checkpoint: epoch, I_1..I_T, information centroid, per-block I_t
  fisher_curves.png      I_t per checkpoint          centroid.png   IC against epoch
  layer_heatmap.png      block x timestep Fisher of the last checkpoint (rows normalised)
  windows.json, window_deficits.png   with --analyses=...,windows: accuracy with Gaussian
                         noise only during timesteps [t, t+w-1], relative to the last window
  diagnostics.json, firing_<moving|batch>_statistics.png, timestep_accuracy.png   with
                         --analyses=...,diagnostics: spike rate per layer and timestep and
                         accuracy per timestep on the test images, batch-norm in inference
                         mode (moving statistics) and in training mode (batch statistics)
"""
import os
import re

import numpy as np
from absl import flags

from tic_tf import checkpoints, cli, plots
from tic_tf.atomic import write_json
from tic_tf.data import get_spec, load_arrays, to_unit_range
from tic_tf.diagnostics import TimestepProbe
from tic_tf.fisher import LABEL_MODES, METHODS, temporal_fisher
from tic_tf.models import BN_STATISTICS
from tic_tf.windows import window_accuracies

cli.define_data_flags()
flags.DEFINE_list("checkpoints", None, "Checkpoint directories and/or run directories.")
flags.DEFINE_string("output_dir", None, "Where the JSON files and plots go.")
flags.DEFINE_list("analyses", ["fisher"], "Any of: fisher, windows, diagnostics.")
flags.DEFINE_enum("split", "train", ["train", "test"], "Samples for the Fisher measurement.")
flags.DEFINE_integer("num_samples", 256, "Samples for the Fisher measurement.", lower_bound=1)
flags.DEFINE_enum("labels", "data", LABEL_MODES, "data: empirical Fisher (Eq. 6); model: "
                  "labels drawn from the model's prediction (Eq. 5).")
flags.DEFINE_enum("method", "exact", METHODS, "exact: per-sample gradients (Eq. 6); "
                  "batch_mean: the reference code's batch approximation.")
flags.DEFINE_enum("bn_statistics", "moving", BN_STATISTICS, "Batch-norm statistics of the "
                  "Fisher measurement: moving (inference mode, as the reference) or batch (each "
                  "batch's own moments, as in training; held constant by the exact estimator).")
flags.DEFINE_integer("batch_size", 32, "Batch size of the measurements.", lower_bound=1)
flags.DEFINE_integer("timesteps", None, "Run the checkpoints at this T (default: trained T).",
                     lower_bound=1)
flags.DEFINE_integer("window", 3, "Width of the noisy window of timesteps.", lower_bound=1)
flags.DEFINE_float("noise", 0.5, "Window noise: l2 norm as a fraction of the image's norm.",
                   lower_bound=0.0)
flags.DEFINE_integer("eval_samples", None, "Test images for the window and diagnostics "
                     "analyses (default all).",
                     lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed for model-drawn labels and noise.")
flags.DEFINE_boolean("xla", False, "Compile the measurements with XLA (on CPU the Fisher "
                     "estimator runs 2-3x slower with it; see the README).")
flags.mark_flags_as_required(["checkpoints", "output_dir"])
ANALYSES = ("fisher", "windows", "diagnostics")
flags.register_validator("analyses", lambda names: set(names) <= set(ANALYSES),
                         f"--analyses takes any of {', '.join(ANALYSES)}.")
FLAGS = flags.FLAGS


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


def main(argv):
    paths = expand_checkpoints(FLAGS.checkpoints)
    configs = [checkpoints.read_model_config(p) for p in paths]
    spec = get_spec(FLAGS.dataset)
    for path, config in zip(paths, configs):
        checkpoints.check_matches_dataset(config, spec, path)
    arrays = load_arrays(spec, FLAGS.data_dir, FLAGS.manual_dir, FLAGS.data_file)
    images, labels = ((arrays.x_train, arrays.y_train) if FLAGS.split == "train"
                      else (arrays.x_test, arrays.y_test))
    test_images = to_unit_range(arrays.x_test[:FLAGS.eval_samples])
    test_labels = arrays.y_test[:FLAGS.eval_samples]

    fisher_rows, window_rows, diagnostic_rows = [], [], []
    for path in paths:
        model, config = checkpoints.load_model(path, timesteps=FLAGS.timesteps)
        epoch = epoch_of(path)
        if "fisher" in FLAGS.analyses:
            result = temporal_fisher(model, (images, labels), FLAGS.num_samples,
                                     labels=FLAGS.labels, per_layer=FLAGS.method == "exact",
                                     batch_size=FLAGS.batch_size, method=FLAGS.method,
                                     seed=FLAGS.seed, jit_compile=FLAGS.xla,
                                     bn_statistics=FLAGS.bn_statistics)
            fisher_rows.append({"checkpoint": path, "epoch": epoch, **result.to_json()})
            print(f"{path}: IC {result.centroid:.3f}, I_t "
                  f"{np.array2string(result.values, precision=4)}", flush=True)
        if "windows" in FLAGS.analyses:
            windows = window_accuracies(model, test_images, test_labels, FLAGS.window,
                                        FLAGS.noise, FLAGS.seed, FLAGS.batch_size)
            window_rows.append({"checkpoint": path, "epoch": epoch, **windows})
            print(f"{path}: accuracy with noise in windows starting at {windows['starts']}: "
                  f"{np.round(windows['accuracy'], 3).tolist()}", flush=True)
        if "diagnostics" in FLAGS.analyses:
            probe = TimestepProbe(model)
            results = {mode: probe(test_images, test_labels, mode, FLAGS.batch_size * 8)
                       for mode in BN_STATISTICS}
            diagnostic_rows.append({"checkpoint": path, "epoch": epoch,
                                    **{m: r.to_json() for m, r in results.items()}})
            for mode, result in results.items():
                print(f"{path}: {mode} statistics, accuracy from timestep t alone "
                      f"{np.round(result.accuracy_at, 3).tolist()}, deepest layer fires "
                      f"{np.round(list(result.firing.values())[-1], 4).tolist()}", flush=True)

    out = FLAGS.output_dir
    os.makedirs(out, exist_ok=True)
    settings = {name: FLAGS[name].value for name in (
        "dataset", "split", "num_samples", "labels", "method", "timesteps", "window", "noise",
        "seed")}
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
                              os.path.join(out, "window_deficits.png"), FLAGS.window,
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
    print(f"Results written to {out}")


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
