r"""The converged-regime study: where information sits in time once training has converged, per
batch-norm mode, with both Fisher estimators and the early-timestep diagnostics.

    python scripts/converged_study.py --runs=RUN_DIR[,RUN_DIR...] --output_dir=OUT \
        --dataset=fashion_mnist --data_file=data/fashion_mnist.npz

Each run directory is a `tic_tf.train` run with --fisher_every and --keep_checkpoints=all. For
its first Fisher-monitored epoch, the epoch of peak information centroid and its last epoch
(only the last with --last_only),
the study measures on the same training samples the exact per-sample Fisher (per block) and
the reference's batch-mean approximation, each with batch-norm in inference mode (moving
statistics) and with batch statistics, the per-timestep firing and accuracy on test images
with batch-norm in inference and in training mode, and the time-window noise deficits
(Fig. 2). A per_timestep run is measured a second time as its time-specific twin (BNTT
statistics calibrated on training images: the two modes train identically). Writes study.json
and figures into OUT.
"""
import json
import os

import numpy as np
from absl import app, flags

from tic_tf import cli  # first: the commands' environment, before TensorFlow
from tic_tf import checkpoints, plots
from tic_tf.atomic import write_json
from tic_tf.callbacks import read_metrics
from tic_tf.data import DataConfig, to_unit_range
from tic_tf.diagnostics import TimestepProbe
from tic_tf.fisher import temporal_fisher
from tic_tf.models import BN_STATISTICS, time_specific_twin
from tic_tf.windows import window_accuracies

cli.define_flags(DataConfig)
flags.DEFINE_list("runs", None, "Run directories of tic_tf.train.")
flags.DEFINE_string("output_dir", None, "Where study.json and the figures go.")
flags.DEFINE_integer("fisher_samples", 256, "Training samples of each Fisher measurement.")
flags.DEFINE_integer("eval_samples", 1000, "Test images of the diagnostics and windows.")
flags.DEFINE_integer("calibration_samples", 512, "Training images that calibrate the "
                     "time-specific twin's statistics.")
flags.DEFINE_boolean("last_only", False, "Measure only the last monitored epoch (the study "
                     "at a fraction of the time).")
flags.DEFINE_integer("window", 2, "Width of the noisy window of timesteps (Fig. 2).")
flags.mark_flags_as_required(["runs", "output_dir"])
FLAGS = flags.FLAGS


def chosen_epochs(records):
    """First monitored epoch, epoch of peak information centroid, last monitored epoch."""
    monitored = [r for r in records if "fisher/centroid" in r]
    peak = max(monitored, key=lambda r: r["fisher/centroid"])
    if FLAGS.last_only:
        return [monitored[-1]["epoch"]]
    return sorted({monitored[0]["epoch"], peak["epoch"], monitored[-1]["epoch"]})


# The Fisher measurements: both estimators, with moving (inference) and with batch statistics.
ESTIMATORS = {"exact": dict(per_layer=True), "batch_mean": dict(method="batch_mean"),
              "exact_batch_statistics": dict(per_layer=True, bn_statistics="batch"),
              "batch_mean_batch_statistics": dict(method="batch_mean", bn_statistics="batch")}


def measure(model, train, test):
    """Both Fisher estimators and the diagnostics in both batch-norm modes, window deficits."""
    probe = TimestepProbe(model)
    return {**{name: temporal_fisher(model, train, FLAGS.fisher_samples, **options).to_json()
               for name, options in ESTIMATORS.items()},
            "diagnostics": {mode: probe(*test, bn_statistics=mode).to_json()
                            for mode in BN_STATISTICS},
            "windows": window_accuracies(model, *test, FLAGS.window, 0.5, 0, 100)}


def main(argv):
    del argv
    arrays = cli.from_flags(DataConfig).load()
    train = (to_unit_range(arrays.x_train[:FLAGS.fisher_samples]),
             arrays.y_train[:FLAGS.fisher_samples])
    test = (to_unit_range(arrays.x_test[:FLAGS.eval_samples]), arrays.y_test[:FLAGS.eval_samples])
    calibration = to_unit_range(arrays.x_train[:FLAGS.calibration_samples])
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    study = {"settings": {name: FLAGS[name].value for name in (
        "dataset", "fisher_samples", "eval_samples", "calibration_samples", "window",
        "last_only")},
        "runs": {}}
    for run_dir in FLAGS.runs:
        records = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
        with open(os.path.join(run_dir, "flags.json")) as handle:
            settings = json.load(handle)["run_settings"]
        trajectory = [{"epoch": r["epoch"], "loss": r["loss"], "accuracy": r["accuracy"],
                       "test_accuracy": r.get("val_accuracy"),
                       "centroid": r.get("fisher/centroid"),
                       "fisher": r["fisher"]["fisher"] if "fisher" in r else None}
                      for r in records]
        variants = {settings["batch_norm"]: {}}
        if settings["batch_norm"] == "per_timestep":
            variants["time_specific (twin)"] = {}
        for epoch in chosen_epochs(records):
            path = os.path.join(run_dir, "checkpoints", f"epoch-{epoch:04d}")
            model, _ = checkpoints.load_model(path)
            variants[settings["batch_norm"]][epoch] = measure(model, train, test)
            if "time_specific (twin)" in variants:
                twin = time_specific_twin(model, calibration)
                variants["time_specific (twin)"][epoch] = measure(twin, train, test)
            for name, measured in variants.items():
                row = measured[epoch]
                print(f"{run_dir} [{name}] epoch {epoch}: exact IC "
                      f"{row['exact']['centroid']:.3f} I_t "
                      f"{np.round(row['exact']['fisher'], 3).tolist()}; batch-mean IC "
                      f"{row['batch_mean']['centroid']:.3f}; with batch statistics: exact IC "
                      f"{row['exact_batch_statistics']['centroid']:.3f}, batch-mean IC "
                      f"{row['batch_mean_batch_statistics']['centroid']:.3f}; "
                      "accuracy at t alone (moving) "
                      f"{np.round(row['diagnostics']['moving']['accuracy_at'], 3).tolist()}",
                      flush=True)
        name = os.path.basename(os.path.normpath(run_dir))
        study["runs"][name] = {"settings": settings, "trajectory": trajectory,
                               "measured": variants}
        write_json(os.path.join(FLAGS.output_dir, "study.json"), study)
        figures(name, study["runs"][name])
    plots.centroids_by_label({name: ([r["epoch"] for r in run["trajectory"] if r["centroid"]],
                                     [r["centroid"] for r in run["trajectory"] if r["centroid"]])
                              for name, run in study["runs"].items()},
                             os.path.join(FLAGS.output_dir, "centroid_trajectories.png"))
    print(f"Study written to {FLAGS.output_dir}")


def figures(name, run):
    out = FLAGS.output_dir
    for variant, by_epoch in run["measured"].items():
        tag = f"{name}_{variant.split()[0]}"
        epochs = sorted(by_epoch)
        last = by_epoch[epochs[-1]]
        plots.fisher_curves({f"epoch {e} ({estimator})": np.array(by_epoch[e][estimator]["fisher"])
                             / np.sum(by_epoch[e][estimator]["fisher"])
                             for e in epochs for estimator in ESTIMATORS},
                            os.path.join(out, f"{tag}_fisher_curves.png"),
                            title=f"I_t / sum I_t, {variant}")
        blocks = np.array(list(last["exact"]["per_layer"].values()))
        plots.heatmap(blocks / np.maximum(blocks.max(axis=1, keepdims=True), 1e-30),
                      list(last["exact"]["per_layer"]), range(1, blocks.shape[1] + 1),
                      os.path.join(out, f"{tag}_block_heatmap.png"), xlabel="timestep",
                      title=f"Fisher per block, epoch {epochs[-1]}, {variant}")
        for mode in BN_STATISTICS:
            firing = {k: np.array(v) for k, v in last["diagnostics"][mode]["firing"].items()}
            plots.firing_heatmap(firing, f"spike rate, {mode} statistics, {variant}",
                                 os.path.join(out, f"{tag}_firing_{mode}.png"))
        plots.timestep_accuracy(last["diagnostics"], os.path.join(out, f"{tag}_accuracy.png"),
                                f"epoch {epochs[-1]}, {variant}")


if __name__ == "__main__":
    app.run(main)
