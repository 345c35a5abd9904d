"""The paper's experiments as runs of the library, resumable, at three scales (docs/reproducing.md).

    from tic_tf.experiments import run_experiment
    summary = run_experiment("fig1", "smoke", "reproduce/")

Every experiment trains through `training.train` and measures through `analysis.analyze`,
`robustness.evaluate` or `iterative_pruning.prune` into `<output_dir>/<scale>/`: one run
directory per training under `runs/` (a finished run, one with its results.json, is skipped;
an interrupted one resumes), the measurements under `<experiment>_<measurement>/`, and
`<experiment>.json` (every number behind the figure, with the scale's sizes) and
`<experiment>.png`.
- fig1: information centroid across epochs, and I_t at chosen epochs (Fig. 1)
- fig2: accuracy with noise only during a window of timesteps, at chosen epochs (Fig. 2)
- fig3: block x timestep Fisher at chosen epochs (Fig. 3)
- fig4: IC against epoch, one panel per factor (T, tau, learning rate, weight decay, data
  set, architecture), one curve per value (Fig. 4)
- fig5: per alpha of the alpha loss, I_t after training, training L_t and test accuracy per
  epoch (Fig. 5)
- table1: clean, Gaussian, blur, FGSM and PGD accuracy per alpha (Table 1)
- fig7: accuracy against sparsity of iterative pruning, one curve per T_retrain, per
  architecture (Fig. 7)
"""
import dataclasses
import json
import os
import time

import numpy as np

from tic_tf import plots, run_lock
from tic_tf.analysis import AnalysisConfig, analyze
from tic_tf.atomic import write_json
from tic_tf.callbacks import read_metrics
from tic_tf.data import DataConfig, get_spec
from tic_tf.errors import DataUnavailable, UserError
from tic_tf.iterative_pruning import PruneConfig, prune
from tic_tf.models import BN_STATISTICS
from tic_tf.options import check_writable
from tic_tf.robustness import EvaluationConfig, evaluate
from tic_tf.training import TrainConfig, check_run_dir, run_settings, train


@dataclasses.dataclass(frozen=True)
class Scale:
    """The sizes behind one scale of every experiment."""
    base: dict  # TrainConfig fields of the base run (`data` as DataConfig fields)
    measured_epochs: tuple  # checkpoints fig1-3 analyse
    fisher_samples: int  # training images of each Fisher measurement
    eval_samples: int  # test images of each window and robustness measurement
    window: int  # noisy timesteps of fig2
    sweeps: dict  # fig4: factor -> values, each a TrainConfig field ("dataset": a DataConfig)
    alphas: tuple  # fig5 and table1: low, intermediate and high alpha of the alpha loss
    pruning: dict  # fig7: PruneConfig fields
    pruned: tuple  # fig7: the base run with each of these changes (a dict each) is pruned


FASHION_MNIST = dict(dataset="fashion_mnist")

SCALES = {
    # Every code path in about a minute: the bundled digits, a tiny AlexNet, two epochs.
    "smoke": Scale(
        base=dict(data=dict(dataset="digits"), arch="alexnet", width=0.125, timesteps=3,
                  optimizer="adam", learning_rate=3e-3, batch_size=128, epochs=2,
                  train_examples=512,
                  fisher_every=1, fisher_samples=16, export=False, verbose=0),
        measured_epochs=(1, 2), fisher_samples=16, eval_samples=64, window=2,
        sweeps={"timesteps": (2, 3), "arch": ("alexnet",)}, alphas=(1e-3, 2.2),
        pruning=dict(rounds=2, retrain_epochs=1, retrain_timesteps=(3, 2, "auto"),
                     batch_size=128, fisher_samples=16, verbose=0),
        pruned=({},)),
    # The converged regime on 2 CPU cores in hours (docs/results.md, "Temporal information
    # concentration"): 1,024 Fashion-MNIST images, no augmentation, ResNet19 at width 1/8.
    "cpu": Scale(
        base=dict(data=FASHION_MNIST, arch="resnet19", width=0.125, timesteps=4,
                  optimizer="adam", learning_rate=1e-3, weight_decay=5e-4, batch_size=32,
                  epochs=150, train_examples=1024, test_examples=1000, augment=False,
                  eval_every=5, fisher_every=3, fisher_samples=128, export=False, verbose=2),
        measured_epochs=(3, 30, 150), fisher_samples=128, eval_samples=1000, window=2,
        sweeps={"timesteps": (4, 6, 8), "tau": (0.75, 2.0, 4.0),
                "arch": ("alexnet", "resnet19")},
        alphas=(1e-3, 1e-2, 7e-2),  # the paper's CIFAR-10 alphas
        # N_retrain / N = 10 / 150 (the paper: 60 / 300), to fit the four tracks in an hour;
        # retraining on the base run's 1,024 images, without augmentation, as it trained.
        pruning=dict(rounds=5, retrain_epochs=10, retrain_timesteps=(4, 3, 2, "auto"),
                     batch_size=32, fisher_samples=128, train_examples=1024, augment=False,
                     verbose=0),
        pruned=({},)),
    # The paper's setting (docs/method.md), sized for a GPU.
    "paper": Scale(
        base=dict(data=dict(dataset="cifar10"), arch="resnet19", width=1.0, timesteps=10,
                  optimizer="sgd", learning_rate=0.3, momentum=0.9, weight_decay=5e-4,
                  batch_size=128, epochs=300, fisher_every=10, fisher_samples=256,
                  export=False, verbose=2),
        measured_epochs=(20, 120, 300), fisher_samples=256, eval_samples=10000, window=3,
        sweeps={"timesteps": (4, 6, 8, 10), "tau": (0.75, 2.0, 4.0),
                "learning_rate": (3e-2, 8e-2, 3e-1, 8e-1), "weight_decay": (1e-4, 5e-4, 1e-3),
                "dataset": ("cifar10", "svhn", "fashion_mnist"),
                "arch": ("alexnet", "resnet19", "resnet34")},
        alphas=(1e-3, 1e-2, 7e-2),
        # The paper's pruning: p = 50%, R = 5, N_retrain = 60, from a T = 5 model.
        pruning=dict(rounds=5, retrain_epochs=60, retrain_timesteps=(5, 4, 3, 2, "auto"),
                     learning_rate=0.01, batch_size=128, fisher_samples=256, verbose=2),
        pruned=({"arch": "vgg16", "timesteps": 5}, {"timesteps": 5})),
}


@dataclasses.dataclass(frozen=True)
class DataSources:
    """Where the data sets an experiment needs come from, beside a scale's own settings:
    TFDS's `data_dir` and `manual_dir`, and .npz files by data set name."""
    data_dir: str = None
    manual_dir: str = None
    files: dict = dataclasses.field(default_factory=dict)

    def config(self, data):
        """The DataConfig of a scale's `data` settings."""
        data = {"data_dir": self.data_dir, "manual_dir": self.manual_dir, **data}
        if data["dataset"] in self.files:
            data["data_file"] = self.files[data["dataset"]]
        return DataConfig(**data)

    def __post_init__(self):
        for name in self.files:
            get_spec(name)  # a misspelt name would otherwise be ignored

    def check_available(self, data, experiment):
        """Load `data` once, or stop with the three ways of providing it."""
        config = self.config(data)
        try:
            config.load()
        except DataUnavailable as error:
            name = config.dataset
            archives = " (train_32x32.mat and test_32x32.mat)" if name == "svhn" else ""
            raise UserError(
                f"{experiment} needs the {name} data set, which is not available here "
                f"({error.reason}); nothing was trained. Provide it in one of three ways: "
                f"--data_dir=DIR holding the prepared TFDS {config.spec.tfds_name}, "
                f"--manual_dir=DIR holding its original archives{archives}, or "
                f"--data_files={name}=PATH.npz with x_train, y_train, x_test and y_test "
                "arrays.") from error


class Runs:
    """Trains an experiment's runs, skipping finished ones, with a progress line per run and
    an estimate of the time left; then maps run names to their directories."""

    def __init__(self, root, sources):
        self.root, self.sources = root, sources

    def train_all(self, planned):
        """Train every (name, settings) of `planned`; returns {name: run directory}."""
        run_dirs, seconds = {}, []
        for done, (name, settings) in enumerate(planned.items(), 1):
            run_dir = os.path.join(self.root, "runs", name)
            settings = dict(settings)
            config = TrainConfig(data=self.sources.config(settings.pop("data")),
                                 model_dir=run_dir, **settings)
            run_dirs[name] = run_dir
            if os.path.isfile(os.path.join(run_dir, "results.json")):
                check_run_dir(run_dir, run_settings(config))  # the same run, not a stale one
                print(f"[{done}/{len(planned)}] {name}: already trained, skipped.", flush=True)
                continue
            started = time.perf_counter()
            train(config)
            seconds.append(time.perf_counter() - started)
            left = np.mean(seconds) * (len(planned) - done)
            print(f"[{done}/{len(planned)}] {name}: trained in {seconds[-1]:.0f} s; about "
                  f"{left / 60:.0f} min left.", flush=True)
        return run_dirs


def _base(scale):
    return {"base": {**scale.base, "keep_checkpoints": scale.measured_epochs}}


def _checkpoints(run_dir, epochs):
    return tuple(os.path.join(run_dir, "checkpoints", f"epoch-{epoch:04d}") for epoch in epochs)


def _analysis(context, run_dir, name, analyses, epochs, bn_statistics="moving"):
    scale = context.scale
    config = AnalysisConfig(checkpoints=_checkpoints(run_dir, epochs),
                            output_dir=os.path.join(context.root, name),
                            data=context.sources.config(scale.base["data"]),
                            analyses=analyses, num_samples=scale.fisher_samples,
                            eval_samples=scale.eval_samples, window=scale.window,
                            bn_statistics=bn_statistics)
    return analyze(config)


def _fisher_by_statistics(context, run_dir, name):
    """Fisher rows of the measured epochs, per batch-norm statistics: the moving ones (as the
    reference measures) and each batch's own (as in training), which differ where the
    training and inference networks do (docs/method.md, "Batch-norm and time")."""
    return {mode: _analysis(context, run_dir, os.path.join(name, mode), ("fisher",),
                            context.scale.measured_epochs, mode)["fisher"]
            for mode in BN_STATISTICS}


def _monitored(run_dir):
    """(epochs, records) of the Fisher monitor's records of a run."""
    records = [r for r in read_metrics(os.path.join(run_dir, "metrics.jsonl"))
               if "fisher/centroid" in r]
    return [r["epoch"] for r in records], records


def fig1(context, run_dirs):
    epochs, monitored = _monitored(run_dirs["base"])
    by_statistics = _fisher_by_statistics(context, run_dirs["base"], "fig1_analysis")
    result = {"centroid_by_epoch": {"epochs": epochs,
                                    "centroid": [r["fisher/centroid"] for r in monitored]},
              "fisher_at_epochs": {mode: {str(r["epoch"]): {"fisher": r["fisher"],
                                                            "centroid": r["centroid"]}
                                          for r in rows}
                                   for mode, rows in by_statistics.items()}}
    figure = plots.Panels(1 + len(by_statistics))
    figure.centroids({"monitor": (epochs, result["centroid_by_epoch"]["centroid"])})
    for mode, rows in result["fisher_at_epochs"].items():
        figure.fisher_curves({f"epoch {e}": v["fisher"] for e, v in rows.items()},
                             title=f"I_t, {mode} batch-norm statistics")
    return result, figure


def fig2(context, run_dirs):
    scale = context.scale
    rows = _analysis(context, run_dirs["base"], "fig2_analysis", ("windows",),
                     scale.measured_epochs)["windows"]
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


def fig3(context, run_dirs):
    by_statistics = _fisher_by_statistics(context, run_dirs["base"], "fig3_analysis")
    # Blocks as a list, in network order (JSON objects are written with sorted keys).
    result = {"at_epochs": {mode: {str(r["epoch"]): {"blocks": list(r["per_layer"]),
                                                     "fisher": list(r["per_layer"].values())}
                                   for r in rows}
                            for mode, rows in by_statistics.items()}}
    figure = plots.Panels(len(context.scale.measured_epochs), rows=len(by_statistics))
    for mode, at_epochs in result["at_epochs"].items():
        for epoch, blocks in at_epochs.items():
            matrix = np.array(blocks["fisher"])
            figure.heatmap(matrix / np.maximum(matrix.max(axis=1, keepdims=True), 1e-30),
                           blocks["blocks"], range(1, matrix.shape[1] + 1),
                           xlabel="timestep", title=f"epoch {epoch}, {mode} statistics "
                           "(rows normalised)")
    return result, figure


def _name(factor, value):
    return f"{factor}={value:g}" if isinstance(value, float) else f"{factor}={value}"


# What a field the base run leaves out trains with: a sweep value equal to it is the base run.
_TRAIN_DEFAULTS = {field.name: field.default for field in dataclasses.fields(TrainConfig)}


def _variant(scale, **changes):
    """(name, settings) of the base run with TrainConfig fields (or the data set, "dataset")
    changed as in `changes`: the base run itself if those are its settings."""
    settings = dict(scale.base)
    changed = {}
    for factor, value in changes.items():
        if factor == "dataset":
            current, settings["data"] = settings["data"]["dataset"], {"dataset": value}
        else:
            current, settings[factor] = settings.get(factor, _TRAIN_DEFAULTS.get(factor)), value
        if value != current:
            changed[factor] = value
    if not changed:
        return next(iter(_base(scale).items()))
    return ",".join(_name(f, v) for f, v in changed.items()), settings


def fig4_runs(scale):
    return dict(_variant(scale, **{f: v}) for f, values in scale.sweeps.items()
                for v in values)


def fig4(context, run_dirs):
    scale, result = context.scale, {}
    figure = plots.Panels(len(scale.sweeps))
    for factor, values in scale.sweeps.items():
        curves = {}
        for value in values:
            epochs, monitored = _monitored(run_dirs[_variant(scale, **{factor: value})[0]])
            curves[str(value)] = (epochs, [r["fisher/centroid"] for r in monitored])
        result[factor] = {v: {"epochs": e, "centroid": c} for v, (e, c) in curves.items()}
        figure.centroids(curves, title=factor)
    return result, figure


def alpha_runs(scale):
    """One run per alpha, trained with the alpha loss (Eq. 10), its last checkpoint kept; no
    Fisher monitor (fig5 measures I_t after training)."""
    return {f"alpha={alpha:g}": {**scale.base, "loss": "alpha", "alpha": alpha,
                                 "keep_checkpoints": (scale.base["epochs"],),
                                 "fisher_every": 0}
            for alpha in scale.alphas}


def fig5(context, run_dirs):
    epochs = (context.scale.base["epochs"],)
    result, fisher, losses, accuracy = {}, {}, {}, {}
    for name, run_dir in run_dirs.items():
        row, = _analysis(context, run_dir, os.path.join("fig5_analysis", name), ("fisher",),
                         epochs)["fisher"]
        records = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
        timesteps = range(1, len(row["fisher"]) + 1)
        evaluated = [r for r in records if "val_accuracy" in r]
        result[name] = {
            "fisher": row["fisher"], "centroid": row["centroid"],
            "epochs": [r["epoch"] for r in records],
            "train_loss_t": {str(t): [r[f"loss_t{t}"] for r in records] for t in timesteps},
            "test_epochs": [r["epoch"] for r in evaluated],
            "test_accuracy": [r["val_accuracy"] for r in evaluated]}
        fisher[name] = row["fisher"]
        for t in (1, len(timesteps)):
            losses[f"{name}, L_{t}"] = (result[name]["epochs"], result[name]["train_loss_t"][str(t)])
        accuracy[name] = (result[name]["test_epochs"], result[name]["test_accuracy"])
    figure = plots.Panels(3)
    figure.fisher_curves(fisher, title=f"I_t after {epochs[0]} epochs")
    figure.lines(losses, "epoch", "training L_t", "Training loss per timestep", log=True)
    figure.lines(accuracy, "epoch", "test accuracy", "Test accuracy")
    return result, figure


def table1(context, run_dirs):
    scale = context.scale
    rows = evaluate(EvaluationConfig(
        checkpoints=tuple(run_dirs.values()), output_dir=os.path.join(context.root,
                                                                      "table1_evaluation"),
        data=context.sources.config(scale.base["data"]), eval_samples=scale.eval_samples))
    result = {name: {"checkpoint": row["checkpoint"], "accuracy": row["accuracy"]}
              for name, row in zip(run_dirs, rows)}
    figure = plots.Panels(1)
    figure.grouped_bars({name: row["accuracy"] for name, row in result.items()},
                        ylabel="test accuracy", title="Robustness per alpha")
    return result, figure


def fig7_runs(scale):
    return dict(_variant(scale, **changes) for changes in scale.pruned)


def fig7(context, run_dirs):
    scale, result = context.scale, {}
    figure = plots.Panels(len(run_dirs))
    for name, run_dir in run_dirs.items():
        settings = dict(scale.pruning)
        config = PruneConfig(checkpoint=run_dir, output_dir=os.path.join(
            context.root, "fig7_pruning", name), data=context.sources.config(scale.base["data"]),
            eval_samples=scale.eval_samples,
            retrain_timesteps=tuple(settings.pop("retrain_timesteps")), **settings)
        summary = prune(config)
        result[name] = {
            "dense_accuracy": summary["dense_accuracy"], "auto": summary["auto"],
            "tracks": {str(t["retrain_timesteps"]): {
                "sparsity": [r["sparsity"] for r in t["rounds"]],
                "accuracy_at_T": [r["accuracy_at_T"] for r in t["rounds"]],
                "accuracy_at_T_retrain": [r["accuracy_at_T_retrain"] for r in t["rounds"]],
                "retrain_s": t["retrain_s"], "formula_saving_percent":
                    t["formula_saving_percent"], "measured_saving_percent":
                    t["measured_saving_percent"]} for t in summary["tracks"]}}
        figure.accuracy_vs_sparsity(
            {f"T_retrain={t}": (v["sparsity"], v["accuracy_at_T"])
             for t, v in result[name]["tracks"].items()},
            title=name)
    return result, figure


@dataclasses.dataclass(frozen=True)
class Experiment:
    runs: callable  # scale -> {run name: TrainConfig fields}
    measure: callable  # (context, {run name: run directory}) -> (JSON record, plots.Panels)


EXPERIMENTS = {"fig1": Experiment(_base, fig1), "fig2": Experiment(_base, fig2),
               "fig3": Experiment(_base, fig3), "fig4": Experiment(fig4_runs, fig4),
               "fig5": Experiment(alpha_runs, fig5), "table1": Experiment(alpha_runs, table1),
               "fig7": Experiment(fig7_runs, fig7)}


@dataclasses.dataclass(frozen=True)
class Context:
    scale: Scale
    root: str
    sources: DataSources


def run_experiment(experiment, scale_name, output_dir, sources=DataSources()):
    """Run `experiment` at `scale_name` into `output_dir/<scale>/`; returns its JSON record."""
    if experiment not in EXPERIMENTS:
        raise UserError(f"Unknown experiment {experiment!r}; choose one of "
                        f"{', '.join(EXPERIMENTS)}.")
    if scale_name not in SCALES:
        raise UserError(f"Unknown scale {scale_name!r}; choose one of {', '.join(SCALES)}.")
    check_writable("output_dir", output_dir, "directory")
    scale = SCALES[scale_name]
    planned = EXPERIMENTS[experiment].runs(scale)
    needed = {json.dumps(s["data"], sort_keys=True): s["data"] for s in planned.values()}
    for data in needed.values():  # before any training
        sources.check_available(data, f"{experiment} at scale {scale_name}")
    root = os.path.join(output_dir, scale_name)
    sizes = dataclasses.asdict(scale)
    print(f"{experiment} at scale {scale_name}: {json.dumps(sizes)}", flush=True)
    with run_lock.holding(root):  # one driver per scale's directory
        run_dirs = Runs(root, sources).train_all(planned)
        result, figure = EXPERIMENTS[experiment].measure(Context(scale, root, sources),
                                                         run_dirs)
        record = {"experiment": experiment, "scale": scale_name, "sizes": sizes, **result}
        write_json(os.path.join(root, f"{experiment}.json"), record)
        figure.save(os.path.join(root, f"{experiment}.png"))
    print(f"Wrote {root}/{experiment}.json and {experiment}.png", flush=True)
    return record
