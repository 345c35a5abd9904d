"""The paper's experiments as runs of the library, resumable, at three scales (PAPER.md 3, 6).

    from tic_tf.experiments import run_experiment
    summary = run_experiment("fig1", "smoke", "reproduce/")

Every experiment trains through `training.train` and measures through `analysis.analyze`
into `<output_dir>/<scale>/`: one run directory per training under `runs/` (a finished run,
one with its results.json, is skipped; an interrupted one resumes), and `<experiment>.json`
(every number behind the figure, with the scale's sizes) and `<experiment>.png`.
- fig1: information centroid across epochs, and I_t at chosen epochs (Fig. 1)
- fig2: accuracy with noise only during a window of timesteps, at chosen epochs (Fig. 2)
- fig3: block x timestep Fisher at chosen epochs (Fig. 3)
- fig4: IC against epoch, one panel per factor (T, tau, learning rate, weight decay, data
  set, architecture), one curve per value (Fig. 4)
"""
import dataclasses
import json
import os
import time

import numpy as np

from tic_tf import plots
from tic_tf.analysis import AnalysisConfig, analyze
from tic_tf.atomic import write_json
from tic_tf.callbacks import read_metrics
from tic_tf.data import DataConfig
from tic_tf.errors import UserError
from tic_tf.training import TrainConfig, check_run_dir, run_settings, train


@dataclasses.dataclass(frozen=True)
class Scale:
    """The sizes behind one scale of every experiment."""
    base: dict  # TrainConfig fields of the base run (`data` as DataConfig fields)
    measured_epochs: tuple  # checkpoints fig1-3 analyse
    fisher_samples: int  # training images of each Fisher measurement
    eval_samples: int  # test images of each window measurement
    window: int  # noisy timesteps of fig2
    sweeps: dict  # fig4: factor -> values, each a TrainConfig field ("dataset": a DataConfig)


FASHION_MNIST = dict(dataset="fashion_mnist", data_file="../shared/data/fashion_mnist.npz")

SCALES = {
    # Every code path in about a minute: the bundled digits, a tiny AlexNet, two epochs.
    "smoke": Scale(
        base=dict(data=dict(dataset="digits"), arch="alexnet", width=0.125, timesteps=3,
                  optimizer="adam", learning_rate=3e-3, batch_size=128, epochs=2,
                  fisher_every=1, fisher_samples=16, export=False, verbose=0),
        measured_epochs=(1, 2), fisher_samples=16, eval_samples=64, window=2,
        sweeps={"timesteps": (2, 3), "arch": ("alexnet",)}),
    # The converged regime on 2 CPU cores in hours (README, "Temporal information
    # concentration"): 1,024 Fashion-MNIST images, no augmentation, ResNet19 at width 1/8.
    "cpu": Scale(
        base=dict(data=FASHION_MNIST, arch="resnet19", width=0.125, timesteps=4,
                  optimizer="adam", learning_rate=1e-3, weight_decay=5e-4, batch_size=32,
                  epochs=150, train_examples=1024, test_examples=1000, augment=False,
                  eval_every=5, fisher_every=3, fisher_samples=128, export=False, verbose=2),
        measured_epochs=(3, 30, 150), fisher_samples=128, eval_samples=1000, window=2,
        sweeps={"timesteps": (4, 6, 8), "tau": (0.75, 2.0, 4.0),
                "arch": ("alexnet", "resnet19")}),
    # The paper's setting (PAPER.md section 2), sized for a GPU.
    "paper": Scale(
        base=dict(data=dict(dataset="cifar10"), arch="resnet19", width=1.0, timesteps=10,
                  optimizer="sgd", learning_rate=0.3, momentum=0.9, weight_decay=5e-4,
                  batch_size=128, epochs=300, fisher_every=10, fisher_samples=256,
                  export=False, verbose=2),
        measured_epochs=(20, 120, 300), fisher_samples=256, eval_samples=10000, window=3,
        sweeps={"timesteps": (4, 6, 8, 10), "tau": (0.75, 2.0, 4.0),
                "learning_rate": (3e-2, 8e-2, 3e-1, 8e-1), "weight_decay": (1e-4, 5e-4, 1e-3),
                "dataset": ("cifar10", "svhn", "fashion_mnist"),
                "arch": ("alexnet", "resnet19", "resnet34")}),
}


def train_config(settings, run_dir):
    """A TrainConfig from a scale's settings (`data` as a dict) into `run_dir`."""
    settings = dict(settings)
    data = DataConfig(**settings.pop("data"))
    return TrainConfig(data=data, model_dir=run_dir, **settings)


class Runs:
    """Trains the runs an experiment needs, skipping finished ones, with a progress line per
    run and an estimate of the time left."""

    def __init__(self, root, total):
        self.root, self.total, self.done, self.seconds = root, total, 0, []
        self.trained = set()

    def train(self, name, settings):
        """The run directory of run `name`, trained with `settings` unless it already is."""
        run_dir = os.path.join(self.root, "runs", name)
        config = train_config(settings, run_dir)
        if run_dir in self.trained:  # another panel of this experiment used it
            return run_dir
        self.trained.add(run_dir)
        self.done += 1
        if os.path.isfile(os.path.join(run_dir, "results.json")):
            check_run_dir(run_dir, run_settings(config))  # the same run, not a stale one
            print(f"[{self.done}/{self.total}] {name}: already trained, skipped.", flush=True)
            return run_dir
        started = time.perf_counter()
        train(config)
        self.seconds.append(time.perf_counter() - started)
        left = np.mean(self.seconds) * (self.total - self.done)
        print(f"[{self.done}/{self.total}] {name}: trained in {self.seconds[-1]:.0f} s; about "
              f"{left / 60:.0f} min left.", flush=True)
        return run_dir


def _base_settings(scale):
    return {**scale.base, "keep_checkpoints": scale.measured_epochs}


def _checkpoints(run_dir, epochs):
    return tuple(os.path.join(run_dir, "checkpoints", f"epoch-{epoch:04d}") for epoch in epochs)


def _analysis(scale, run_dir, out, analyses):
    config = AnalysisConfig(checkpoints=_checkpoints(run_dir, scale.measured_epochs),
                            output_dir=out, data=DataConfig(**scale.base["data"]),
                            analyses=analyses, num_samples=scale.fisher_samples,
                            eval_samples=scale.eval_samples, window=scale.window)
    return analyze(config)


def fig1(scale, root, runs):
    run_dir = runs.train("base", _base_settings(scale))
    monitored = [r for r in read_metrics(os.path.join(run_dir, "metrics.jsonl"))
                 if "fisher/centroid" in r]
    rows = _analysis(scale, run_dir, os.path.join(root, "fig1_analysis"), ("fisher",))["fisher"]
    result = {"centroid_by_epoch": {"epochs": [r["epoch"] for r in monitored],
                                    "centroid": [r["fisher/centroid"] for r in monitored]},
              "fisher_at_epochs": {str(r["epoch"]): {"fisher": r["fisher"],
                                                     "centroid": r["centroid"]} for r in rows}}
    figure = plots.Panels(2)
    figure.centroids({"monitor": (result["centroid_by_epoch"]["epochs"],
                                  result["centroid_by_epoch"]["centroid"])})
    figure.fisher_curves({f"epoch {e}": v["fisher"]
                          for e, v in result["fisher_at_epochs"].items()})
    return result, figure


def fig2(scale, root, runs):
    run_dir = runs.train("base", _base_settings(scale))
    rows = _analysis(scale, run_dir, os.path.join(root, "fig2_analysis"),
                     ("windows",))["windows"]
    result = {"window": scale.window, "noise": 0.5,
              "at_epochs": {str(r["epoch"]): {k: r[k] for k in ("starts", "accuracy",
                                                                 "relative_to_last")}
                            for r in rows}}
    figure = plots.Panels(len(rows))
    for epoch, row in result["at_epochs"].items():
        relative = row["relative_to_last"] is not None
        figure.window_deficits(row["starts"], row["relative_to_last" if relative
                                                  else "accuracy"], scale.window, relative,
                               title=f"epoch {epoch}")
    return result, figure


def fig3(scale, root, runs):
    run_dir = runs.train("base", _base_settings(scale))
    rows = _analysis(scale, run_dir, os.path.join(root, "fig3_analysis"), ("fisher",))["fisher"]
    # Blocks as a list, in network order (JSON objects are written with sorted keys).
    result = {"at_epochs": {str(r["epoch"]): {"blocks": list(r["per_layer"]),
                                               "fisher": list(r["per_layer"].values())}
                            for r in rows}}
    figure = plots.Panels(len(rows))
    for epoch, blocks in result["at_epochs"].items():
        matrix = np.array(blocks["fisher"])
        figure.heatmap(matrix / np.maximum(matrix.max(axis=1, keepdims=True), 1e-30),
                       blocks["blocks"], range(1, matrix.shape[1] + 1), xlabel="timestep",
                       title=f"epoch {epoch} (rows normalised)")
    return result, figure


def _sweep_run(scale, factor, value):
    """(name, settings) of the fig4 run with `factor` = `value`: the base run if that is
    the base setting."""
    current = scale.base["data"]["dataset"] if factor == "dataset" else scale.base[factor]
    if value == current:
        return "base", _base_settings(scale)
    settings = dict(scale.base)
    if factor == "dataset":
        settings["data"] = {"dataset": value}
    else:
        settings[factor] = value
    return f"{factor}={value}", settings


def fig4(scale, root, runs):
    result = {}
    figure = plots.Panels(len(scale.sweeps))
    for factor, values in scale.sweeps.items():
        curves = {}
        for value in values:
            run_dir = runs.train(*_sweep_run(scale, factor, value))
            monitored = [r for r in read_metrics(os.path.join(run_dir, "metrics.jsonl"))
                         if "fisher/centroid" in r]
            curves[str(value)] = ([r["epoch"] for r in monitored],
                                  [r["fisher/centroid"] for r in monitored])
        result[factor] = {v: {"epochs": e, "centroid": c} for v, (e, c) in curves.items()}
        figure.centroids(curves, title=factor)
    return result, figure


EXPERIMENTS = {"fig1": fig1, "fig2": fig2, "fig3": fig3, "fig4": fig4}


def _run_count(experiment, scale):
    if experiment != "fig4":
        return 1
    return len({_sweep_run(scale, f, v)[0] for f, values in scale.sweeps.items()
                for v in values})


def run_experiment(experiment, scale_name, output_dir):
    """Run `experiment` at `scale_name` into `output_dir/<scale>/`; returns its JSON record."""
    if experiment not in EXPERIMENTS:
        raise UserError(f"Unknown experiment {experiment!r}; choose one of "
                        f"{', '.join(EXPERIMENTS)}.")
    if scale_name not in SCALES:
        raise UserError(f"Unknown scale {scale_name!r}; choose one of {', '.join(SCALES)}.")
    scale = SCALES[scale_name]
    root = os.path.join(output_dir, scale_name)
    os.makedirs(root, exist_ok=True)
    sizes = dataclasses.asdict(scale)
    print(f"{experiment} at scale {scale_name}: {json.dumps(sizes)}", flush=True)
    runs = Runs(root, _run_count(experiment, scale))
    result, figure = EXPERIMENTS[experiment](scale, root, runs)
    record = {"experiment": experiment, "scale": scale_name, "sizes": sizes, **result}
    write_json(os.path.join(root, f"{experiment}.json"), record)
    figure.save(os.path.join(root, f"{experiment}.png"))
    print(f"Wrote {root}/{experiment}.json and {experiment}.png", flush=True)
    return record
