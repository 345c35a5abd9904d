"""TIC-aware iterative magnitude pruning (docs/method.md), resumable.

    from tic_tf.iterative_pruning import PruneConfig, prune
    summary = prune(PruneConfig(checkpoint="runs/t5", output_dir="runs/t5_prune",
                                retrain_timesteps=(5, 3, 2, "auto")))

Starting from a checkpoint trained with T timesteps, for each T_retrain in
`retrain_timesteps`, runs R rounds of: prune `fraction` of the remaining weights by magnitude,
retrain `retrain_epochs` epochs with T_retrain timesteps, evaluate at T and at T_retrain.
`auto` picks T_retrain from the model's own temporal Fisher curve (`auto_timesteps`).

Writes to `output_dir`: T<r>/round-NN/ (checkpoint with masks and optimizer, results.json),
results.json and results.md (accuracy against sparsity, compute saved by the paper's formula
and in measured retraining time) and accuracy_vs_sparsity.png. Running it again skips finished
rounds and resumes after the last complete one.
"""
import dataclasses
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from tic_tf import checkpoints, distribute, plots
from tic_tf.atomic import write_json, write_text
from tic_tf.compiled import cached, function
from tic_tf.data import (DataConfig, first_examples, steps_per_epoch, to_unit_range,
                         train_dataset)
from tic_tf.distribute import DistributeConfig
from tic_tf.errors import UserError
from tic_tf.fisher import temporal_fisher
from tic_tf.losses import MeanLogitCrossEntropy, accuracy_metric
from tic_tf.models import with_timesteps
from tic_tf.options import (augment, check_choices, check_paths, check_positive, eval_samples,
                            nested, option, output_dir, require, seed, train_examples, xla)
from tic_tf.pruning import (PruningSummaries, overall_sparsity, prune_low_magnitude,
                            prune_to_sparsity, retraining_schedule)


def _retrain_timesteps(values):
    for value in values:
        if value != "auto" and not value.isdigit():
            raise UserError(f"--retrain_timesteps takes integers or 'auto', got {value!r}.")
    return tuple(v if v == "auto" else int(v) for v in values)


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """Iterative pruning of one trained checkpoint, one track per T_retrain."""
    checkpoint: str = option(None, "Trained checkpoint (epoch-NNNN) or run directory.",
                             kind=str)
    output_dir: str = output_dir("the rounds, results and plot")
    data: DataConfig = nested(DataConfig)
    distribute: DistributeConfig = nested(DistributeConfig)
    rounds: int = option(5, "Pruning rounds R.")
    fraction: float = option(0.5, "Fraction of the remaining weights pruned per round.")
    scope: str = option("layer", "layer: every layer loses the same fraction; global: one "
                        "magnitude threshold over all layers.", choices=["layer", "global"])
    retrain_epochs: int = option(60, "Retraining epochs per round (N_retrain).")
    retrain_timesteps: tuple = option(("auto",), "T_retrain values to run, each a separate "
                                      "track; 'auto' picks it from the Fisher curve.",
                                      parse=_retrain_timesteps)
    auto_threshold: float = option(0.5, "auto: T_retrain is the smallest t after which I_t "
                                   "stays below this fraction of its peak.")
    fisher_samples: int = option(128, "Training images for the auto rule's Fisher curve.")
    train_epochs: int = option(None, "Epochs N of the original training, for the "
                               "compute-saving formula (default: the checkpoint's epoch "
                               "number).", kind=int)
    learning_rate: float = option(0.01, "Retraining learning rate (cosine decay per round).")
    momentum: float = option(0.9, "SGD momentum.")
    weight_decay: float = option(5e-4, "Weight decay.")
    batch_size: int = option(64, "Global batch size (split over the strategy's replicas).")
    train_examples: int = train_examples(" while retraining: the training run's")
    augment: bool = augment(" while retraining, as the training run did")
    eval_samples: int = eval_samples()
    seed: int = seed("the retraining data order")
    xla: bool = xla(False, "Slower on CPU.")
    verbose: int = option(2, "Keras progress output during retraining (0, 1 or 2).")

    def __post_init__(self):
        check_choices(self)
        check_paths(self)
        require(self.checkpoint and self.output_dir, "checkpoint and output_dir are required.")
        require(0.0 < self.fraction < 1.0, f"--fraction must lie in (0, 1), got "
                f"{self.fraction}.")
        require(0.0 < self.auto_threshold < 1.0, "--auto_threshold must lie in (0, 1).")
        check_positive(self, "rounds", "retrain_epochs", "batch_size", "fisher_samples",
                       "eval_samples", "train_epochs")
        require(self.train_examples >= 0, "--train_examples must be >= 0.")
        require(self.learning_rate > 0, "--learning_rate must be above 0.")
        require(len(self.retrain_timesteps) > 0,
                "--retrain_timesteps needs at least one value.")
        require(all(v == "auto" or isinstance(v, int) for v in self.retrain_timesteps),
                "--retrain_timesteps takes integers or 'auto'.")


ROUND_RESULTS = "results.json"


def _check_timesteps(value, timesteps):
    if not 1 <= value <= timesteps:
        raise UserError(f"T_retrain={value} must lie in [1, {timesteps}] (the checkpoint was "
                        f"trained with T={timesteps}).")


def _epoch_of(path):
    name = os.path.basename(os.path.normpath(path))
    if not name.startswith("epoch-"):
        raise UserError(f"Cannot tell how many epochs {path} was trained for; pass "
                        "--train_epochs.")
    return int(name.split("-")[1])


def accuracy(model, test, batch_size):
    """Test accuracy of `model` on `test` = (images, labels); compiled once per model."""
    predict = cached(model, "prune_predict", lambda: function(
        lambda x: tf.argmax(tf.reduce_mean(model(x, training=False), 1), -1,
                            output_type=tf.int32)))
    images, labels = test
    correct = 0
    for start in range(0, len(images), batch_size):
        correct += int(np.sum(predict(images[start:start + batch_size]).numpy()
                              == labels[start:start + batch_size]))
    return correct / len(images)


def _completed_rounds(track_dir):
    """Results of the rounds already finished in `track_dir`, in order."""
    done = []
    while True:
        path = os.path.join(track_dir, f"round-{len(done) + 1:02d}", ROUND_RESULTS)
        if not os.path.isfile(path):
            return done
        with open(path) as handle:
            done.append(json.load(handle))


def run_track(config, strategy, source, model_config, retrain_timesteps, arrays, test,
              write_dir):
    """All rounds for one T_retrain, resumed from `config.output_dir` and written to
    `write_dir` (the same, except on non-chief workers); returns the per-round results."""
    done = _completed_rounds(os.path.join(config.output_dir, f"T{retrain_timesteps}"))
    if len(done) == config.rounds:
        print(f"T_retrain={retrain_timesteps}: all {config.rounds} rounds already done.")
        return done
    steps = steps_per_epoch(len(arrays.x_train), config.batch_size)
    with strategy.scope():
        model = prune_low_magnitude(with_timesteps(source, retrain_timesteps))
        schedule = retraining_schedule(config.learning_rate, config.retrain_epochs * steps)
        optimizer = keras.optimizers.SGD(schedule, momentum=config.momentum,
                                         weight_decay=config.weight_decay or None)
        model.compile(optimizer, MeanLogitCrossEntropy(), metrics=[accuracy_metric()],
                      jit_compile=config.xla)
        if done:
            previous = os.path.join(config.output_dir, f"T{retrain_timesteps}",
                                    f"round-{len(done):02d}")
            checkpoints.restore(previous, model, optimizer)
            print(f"T_retrain={retrain_timesteps}: resuming after round {len(done)} "
                  f"({previous}).")
    timesteps = model_config["timesteps"]
    at_full_timesteps = with_timesteps(model, timesteps)  # evaluation copy, at T
    for round_index in range(len(done) + 1, config.rounds + 1):
        target = 1.0 - (1.0 - config.fraction) ** round_index
        prune_to_sparsity(model, target, config.scope)
        data, _ = train_dataset(arrays.x_train, arrays.y_train, config.data.spec,
                                config.batch_size, config.seed + 1000 * round_index, 0,
                                config.retrain_epochs, config.augment)
        started = time.perf_counter()
        distribute.fit(model, strategy, data, config.retrain_epochs, 0, steps,
                       verbose=config.verbose, callbacks=[PruningSummaries(
                           os.path.join(write_dir, "tensorboard", f"T{retrain_timesteps}"))])
        seconds = time.perf_counter() - started
        result = {"round": round_index, "target_sparsity": target,
                  "sparsity": overall_sparsity(model), "retrain_timesteps": retrain_timesteps,
                  "retrain_s": seconds,
                  "accuracy_at_T_retrain": accuracy(model, test, config.batch_size)}
        at_full_timesteps.set_weights(model.get_weights())  # masks and all
        result["accuracy_at_T"] = accuracy(at_full_timesteps, test, config.batch_size)
        round_dir = os.path.join(write_dir, f"T{retrain_timesteps}",
                                 f"round-{round_index:02d}")
        checkpoints.write(round_dir, model, {**model_config, "timesteps": retrain_timesteps,
                                             "pruned": True}, optimizer)
        write_json(os.path.join(round_dir, ROUND_RESULTS), result)
        done.append(result)
        print(f"T_retrain={retrain_timesteps} round {round_index}/{config.rounds}: sparsity "
              f"{result['sparsity']:.4f}, accuracy {100 * result['accuracy_at_T']:.2f}% at "
              f"T={timesteps}, {100 * result['accuracy_at_T_retrain']:.2f}% at "
              f"T={retrain_timesteps}, retrained in {seconds:.0f} s", flush=True)
    return done


def auto_timesteps(fisher_values, threshold):
    """The smallest t (1-based) such that I_s < threshold * max(I) for every s > t: the
    T_retrain after which the model's own temporal Fisher information has died down."""
    values = np.asarray(fisher_values, dtype=np.float64)
    above = np.nonzero(values >= threshold * values.max())[0]
    return int(above[-1]) + 1


def compute_saved(train_epochs, retrain_epochs, rounds, timesteps, retrain_timesteps):
    """The paper's compute saving in percent: N_r R (T - T_r) / (N T + N_r R T) * 100."""
    total = train_epochs * timesteps + retrain_epochs * rounds * timesteps
    return 100.0 * retrain_epochs * rounds * (timesteps - retrain_timesteps) / total


def markdown(summary):
    timesteps = summary["timesteps"]
    lines = [f"Accuracy (%) at T={timesteps} / at T_retrain after each round, "
             f"{summary['test_images']} test images; dense model: "
             f"{100 * summary['dense_accuracy']:.2f}%.", "",
             "| T_retrain | " + " | ".join(f"round {r['round']} ({100 * r['sparsity']:.1f}% "
                                           "sparse)" for r in summary["tracks"][0]["rounds"])
             + " | retrain time (s) | saved, formula | saved, measured |",
             "|" + "---|" * (len(summary["tracks"][0]["rounds"]) + 4)]
    for track in summary["tracks"]:
        cells = [f"{100 * r['accuracy_at_T']:.2f} / {100 * r['accuracy_at_T_retrain']:.2f}"
                 for r in track["rounds"]]
        measured = track["measured_saving_percent"]
        lines.append(f"| {track['retrain_timesteps']} | " + " | ".join(cells) +
                     f" | {track['retrain_s']:.0f} | {track['formula_saving_percent']:.1f}% | "
                     + ("n/a" if measured is None else f"{measured:.1f}%") + " |")
    return "\n".join(lines) + "\n"


def prune(config):
    """Run every track `config` asks for; returns the summary written to results.json."""
    strategy = distribute.make_strategy(config.distribute.strategy,
                                        config.distribute.tpu)  # first, as in training
    distribute.check_batch_size(strategy, config.batch_size)
    path = checkpoints.resolve(config.checkpoint)
    model_config = checkpoints.read_model_config(path)
    checkpoints.check_matches_dataset(model_config, config.data.spec, path)
    timesteps = model_config["timesteps"]
    for value in config.retrain_timesteps:
        if value != "auto":
            _check_timesteps(value, timesteps)
    train_epochs = config.train_epochs or _epoch_of(path)
    arrays = first_examples(config.data.load(), config.train_examples)
    source, _ = checkpoints.load_model(path)
    test = (to_unit_range(arrays.x_test[:config.eval_samples]),
            arrays.y_test[:config.eval_samples])
    dense_accuracy = accuracy(source, test, config.batch_size)
    print(f"Dense model {path}: {100 * dense_accuracy:.2f}% at T={timesteps}.")

    auto = None
    if "auto" in config.retrain_timesteps:
        count = min(config.fisher_samples, len(arrays.x_train))
        fisher = temporal_fisher(source, (arrays.x_train[:count], arrays.y_train[:count]), count)
        auto = {"fisher": fisher.values.tolist(), "threshold": config.auto_threshold,
                "retrain_timesteps": auto_timesteps(fisher.values, config.auto_threshold)}
        print(f"auto: I_t = {np.round(fisher.values, 4).tolist()}, T_retrain = "
              f"{auto['retrain_timesteps']} (I_t below {config.auto_threshold:g} x peak "
              "after it).")
    chosen = list(dict.fromkeys(auto["retrain_timesteps"] if v == "auto" else v
                                for v in config.retrain_timesteps))

    summary = {"checkpoint": path, "timesteps": timesteps, "train_epochs": train_epochs,
               "dense_accuracy": dense_accuracy, "test_images": len(test[0]), "auto": auto}
    with distribute.output_dir(strategy, config.output_dir) as write_dir:
        rounds = [run_track(config, strategy, source, model_config, retrain_timesteps, arrays,
                            test, write_dir) for retrain_timesteps in chosen]
        summarise(config, summary, dict(zip(chosen, rounds)), write_dir)
    return summary


def summarise(config, summary, rounds_by_track, write_dir):
    """Complete `summary` with every track's rounds and compute saved; write results.json,
    results.md and the plot into `write_dir`."""
    timesteps, train_epochs = summary["timesteps"], summary["train_epochs"]
    tracks = []
    for retrain_timesteps, rounds in rounds_by_track.items():
        tracks.append({"retrain_timesteps": retrain_timesteps, "rounds": rounds,
                       "retrain_s": sum(r["retrain_s"] for r in rounds),
                       "formula_saving_percent": compute_saved(
                           train_epochs, config.retrain_epochs, config.rounds, timesteps,
                           retrain_timesteps)})
    full = next((t["retrain_s"] for t in tracks if t["retrain_timesteps"] == timesteps), None)
    for track in tracks:  # measured: retraining time saved against retraining at T
        track["measured_saving_percent"] = (None if full is None
                                            else 100.0 * (1.0 - track["retrain_s"] / full))
    summary.update(settings={
        "rounds": config.rounds, "fraction": config.fraction, "scope": config.scope,
        "retrain_epochs": config.retrain_epochs,
        "retrain_timesteps": [str(v) for v in config.retrain_timesteps],
        "learning_rate": config.learning_rate, "batch_size": config.batch_size,
        "train_examples": config.train_examples, "augment": config.augment,
        "seed": config.seed}, tracks=tracks)
    write_json(os.path.join(write_dir, "results.json"), summary)
    write_text(os.path.join(write_dir, "results.md"), markdown(summary))
    plots.accuracy_vs_sparsity(
        {f"T_retrain={t['retrain_timesteps']}": (
            [r["sparsity"] for r in t["rounds"]], [r["accuracy_at_T"] for r in t["rounds"]])
         for t in tracks}, os.path.join(write_dir, "accuracy_vs_sparsity.png"),
        title=f"evaluated at T={timesteps}")
    print(markdown(summary))
