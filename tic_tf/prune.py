"""TIC-aware iterative magnitude pruning (PAPER.md section 5).

    python -m tic_tf.prune --checkpoint=runs/t5 --dataset=cifar10 \
        --data_file=../shared/data/cifar10_subset.npz --output_dir=runs/t5_prune \
        --rounds=5 --fraction=0.5 --retrain_epochs=2 --retrain_timesteps=5,3,2,auto

Starting from a checkpoint trained with T timesteps, for each T_retrain in
--retrain_timesteps, runs R rounds of: prune --fraction of the remaining weights by magnitude,
retrain --retrain_epochs epochs with T_retrain timesteps, evaluate at T and at T_retrain.
`auto` picks T_retrain from the model's own temporal Fisher curve (`auto_timesteps`).

Writes to --output_dir: T<r>/round-NN/ (checkpoint with masks and optimizer, results.json),
results.json and results.md (accuracy against sparsity, compute saved by the paper's formula
and in measured retraining time) and accuracy_vs_sparsity.png. Running the same command again
skips finished rounds and resumes after the last complete one.
"""
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import flags

from tic_tf import checkpoints, cli, distribute, plots
from tic_tf.atomic import write_json, write_text
from tic_tf.compiled import cached
from tic_tf.data import get_spec, load_arrays, steps_per_epoch, to_unit_range, train_dataset
from tic_tf.errors import UserError
from tic_tf.fisher import temporal_fisher
from tic_tf.losses import MeanLogitCrossEntropy, accuracy_metric
from tic_tf.models import with_timesteps
from tic_tf.pruning import (PruningSummaries, attach_masks, auto_timesteps, compute_saved,
                            overall_sparsity, prune_to_sparsity, retraining_schedule)

cli.define_data_flags()
distribute.define_flags()
flags.DEFINE_string("checkpoint", None, "Trained checkpoint (epoch-NNNN) or run directory.")
flags.DEFINE_string("output_dir", None, "Where the rounds, results and plot go.")
flags.DEFINE_integer("rounds", 5, "Pruning rounds R.")
flags.DEFINE_float("fraction", 0.5, "Fraction of the remaining weights pruned per round.")
flags.DEFINE_enum("scope", "layer", ["layer", "global"], "layer: every layer loses the same "
                  "fraction; global: one magnitude threshold over all layers.")
flags.DEFINE_integer("retrain_epochs", 60, "Retraining epochs per round (N_retrain).")
flags.DEFINE_list("retrain_timesteps", ["auto"], "T_retrain values to run, each a separate "
                  "track; 'auto' picks it from the Fisher curve.")
flags.DEFINE_float("auto_threshold", 0.5, "auto: T_retrain is the smallest t after which I_t "
                   "stays below this fraction of its peak.")
flags.DEFINE_integer("fisher_samples", 128, "Training images for the auto rule's Fisher curve.")
flags.DEFINE_integer("train_epochs", None, "Epochs N of the original training, for the "
                     "compute-saving formula (default: the checkpoint's epoch number).")
flags.DEFINE_float("learning_rate", 0.01, "Retraining learning rate (cosine decay per round).")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_float("weight_decay", 5e-4, "Weight decay.")
flags.DEFINE_integer("batch_size", 64, "Global batch size (split over the strategy's "
                     "replicas).")
flags.DEFINE_integer("eval_samples", None, "Test images to evaluate on (default all).")
flags.DEFINE_integer("seed", 0, "Seed of the retraining data order.")
flags.DEFINE_boolean("xla", False, "Compile the retraining step with XLA (slower on CPU).")
flags.DEFINE_integer("verbose", 2, "Keras progress output during retraining (0, 1 or 2).")
flags.mark_flags_as_required(["checkpoint", "output_dir"])
FLAGS = flags.FLAGS

ROUND_RESULTS = "results.json"


def _validate():
    if not 0.0 < FLAGS.fraction < 1.0:
        raise UserError(f"--fraction must lie in (0, 1), got {FLAGS.fraction}.")
    if FLAGS.rounds < 1 or FLAGS.retrain_epochs < 1:
        raise UserError("--rounds and --retrain_epochs must be at least 1.")
    if not 0.0 < FLAGS.auto_threshold < 1.0:
        raise UserError("--auto_threshold must lie in (0, 1).")
    if FLAGS.batch_size < 1 or FLAGS.fisher_samples < 1 or FLAGS.learning_rate <= 0:
        raise UserError("--batch_size and --fisher_samples must be positive, and "
                        "--learning_rate above 0.")
    values = []
    for value in FLAGS.retrain_timesteps:
        if value != "auto" and not value.isdigit():
            raise UserError(f"--retrain_timesteps takes integers or 'auto', got {value!r}.")
        values.append(value)
    if not values:
        raise UserError("--retrain_timesteps needs at least one value.")
    return values


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


def _accuracy(model, test):
    """Test accuracy of `model` on `test` = (images, labels); compiled once per model."""
    predict = cached(model, "prune_predict", lambda: tf.function(
        lambda x: tf.argmax(tf.reduce_mean(model(x, training=False), 1), -1,
                            output_type=tf.int32)))
    images, labels = test
    correct = 0
    for start in range(0, len(images), FLAGS.batch_size):
        correct += int(np.sum(predict(images[start:start + FLAGS.batch_size]).numpy()
                              == labels[start:start + FLAGS.batch_size]))
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


def run_track(strategy, source, config, retrain_steps, arrays, test, spec, write_dir):
    """All rounds for one T_retrain, resumed from --output_dir and written to `write_dir`
    (the same, except on non-chief workers); returns the list of per-round results."""
    done = _completed_rounds(os.path.join(FLAGS.output_dir, f"T{retrain_steps}"))
    if len(done) == FLAGS.rounds:
        print(f"T_retrain={retrain_steps}: all {FLAGS.rounds} rounds already done.")
        return done
    steps = steps_per_epoch(len(arrays.x_train), FLAGS.batch_size)
    with strategy.scope():
        model = with_timesteps(source, retrain_steps)
        masks = attach_masks(model)
        schedule = retraining_schedule(FLAGS.learning_rate, FLAGS.retrain_epochs * steps)
        optimizer = keras.optimizers.SGD(schedule, momentum=FLAGS.momentum,
                                         weight_decay=FLAGS.weight_decay or None)
        model.compile(optimizer, MeanLogitCrossEntropy(), metrics=[accuracy_metric()],
                      jit_compile=FLAGS.xla)
        if done:
            previous = os.path.join(FLAGS.output_dir, f"T{retrain_steps}",
                                    f"round-{len(done):02d}")
            checkpoints.restore(previous, model, optimizer, extra={"masks": masks})
            print(f"T_retrain={retrain_steps}: resuming after round {len(done)} ({previous}).")
    model_config = {**config, "timesteps": retrain_steps}
    at_full_steps = with_timesteps(model, config["timesteps"])  # evaluation copy, at T
    for round_index in range(len(done) + 1, FLAGS.rounds + 1):
        target = 1.0 - (1.0 - FLAGS.fraction) ** round_index
        prune_to_sparsity(masks, target, FLAGS.scope)
        data, _ = train_dataset(arrays.x_train, arrays.y_train, spec, FLAGS.batch_size,
                                FLAGS.seed + 1000 * round_index, 0, FLAGS.retrain_epochs)
        started = time.perf_counter()
        distribute.fit(model, strategy, data, FLAGS.retrain_epochs, 0, steps,
                       verbose=FLAGS.verbose, callbacks=[PruningSummaries(
                           masks, os.path.join(write_dir, "tensorboard", f"T{retrain_steps}"))])
        seconds = time.perf_counter() - started
        result = {"round": round_index, "target_sparsity": target,
                  "sparsity": overall_sparsity(masks), "retrain_timesteps": retrain_steps,
                  "retrain_s": seconds,
                  "accuracy_at_T_retrain": _accuracy(model, test)}
        at_full_steps.set_weights(model.get_weights())
        result["accuracy_at_T"] = _accuracy(at_full_steps, test)
        round_dir = os.path.join(write_dir, f"T{retrain_steps}", f"round-{round_index:02d}")
        checkpoints.write(round_dir, model, model_config, optimizer, extra={"masks": masks})
        write_json(os.path.join(round_dir, ROUND_RESULTS), result)
        done.append(result)
        print(f"T_retrain={retrain_steps} round {round_index}/{FLAGS.rounds}: sparsity "
              f"{result['sparsity']:.4f}, accuracy {100 * result['accuracy_at_T']:.2f}% at "
              f"T={config['timesteps']}, {100 * result['accuracy_at_T_retrain']:.2f}% at "
              f"T={retrain_steps}, retrained in {seconds:.0f} s", flush=True)
    return done


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


def main(argv):
    strategy = distribute.make_strategy(FLAGS.strategy, FLAGS.tpu)  # first, as in train
    requested = _validate()
    distribute.check_batch_size(strategy, FLAGS.batch_size)
    path = checkpoints.resolve(FLAGS.checkpoint)
    config = checkpoints.read_model_config(path)
    spec = get_spec(FLAGS.dataset)
    checkpoints.check_matches_dataset(config, spec, path)
    timesteps = config["timesteps"]
    for value in requested:
        if value != "auto":
            _check_timesteps(int(value), timesteps)
    train_epochs = FLAGS.train_epochs or _epoch_of(path)
    arrays = load_arrays(spec, FLAGS.data_dir, FLAGS.manual_dir, FLAGS.data_file)
    source, _ = checkpoints.load_model(path)
    test = (to_unit_range(arrays.x_test[:FLAGS.eval_samples]),
            arrays.y_test[:FLAGS.eval_samples])
    dense_accuracy = _accuracy(source, test)
    print(f"Dense model {path}: {100 * dense_accuracy:.2f}% at T={timesteps}.")

    auto = None
    if "auto" in requested:
        count = min(FLAGS.fisher_samples, len(arrays.x_train))
        fisher = temporal_fisher(source, (arrays.x_train[:count], arrays.y_train[:count]), count)
        auto = {"fisher": fisher.values.tolist(), "threshold": FLAGS.auto_threshold,
                "retrain_timesteps": auto_timesteps(fisher.values, FLAGS.auto_threshold)}
        print(f"auto: I_t = {np.round(fisher.values, 4).tolist()}, T_retrain = "
              f"{auto['retrain_timesteps']} (I_t below {FLAGS.auto_threshold:g} x peak after it).")
    chosen = list(dict.fromkeys(auto["retrain_timesteps"] if v == "auto" else int(v)
                                for v in requested))

    summary = {"checkpoint": path, "timesteps": timesteps, "train_epochs": train_epochs,
               "dense_accuracy": dense_accuracy, "test_images": len(test[0]), "auto": auto}
    with distribute.output_dir(strategy, FLAGS.output_dir) as write_dir:
        rounds = [run_track(strategy, source, config, steps, arrays, test, spec, write_dir)
                  for steps in chosen]
        summarise(summary, dict(zip(chosen, rounds)), write_dir)


def summarise(summary, rounds_by_track, write_dir):
    """Complete `summary` with every track's rounds and compute saved; write results.json,
    results.md and the plot into `write_dir`."""
    timesteps, train_epochs = summary["timesteps"], summary["train_epochs"]
    tracks = []
    for retrain_steps, rounds in rounds_by_track.items():
        tracks.append({"retrain_timesteps": retrain_steps, "rounds": rounds,
                       "retrain_s": sum(r["retrain_s"] for r in rounds),
                       "formula_saving_percent": compute_saved(
                           train_epochs, FLAGS.retrain_epochs, FLAGS.rounds, timesteps,
                           retrain_steps)})
    full = next((t["retrain_s"] for t in tracks if t["retrain_timesteps"] == timesteps), None)
    for track in tracks:  # measured: retraining time saved against retraining at T
        track["measured_saving_percent"] = (None if full is None
                                            else 100.0 * (1.0 - track["retrain_s"] / full))
    summary.update(settings={name: FLAGS[name].value for name in (
        "rounds", "fraction", "scope", "retrain_epochs", "retrain_timesteps", "learning_rate",
        "batch_size", "seed")}, tracks=tracks)
    write_json(os.path.join(write_dir, "results.json"), summary)
    write_text(os.path.join(write_dir, "results.md"), markdown(summary))
    plots.accuracy_vs_sparsity(
        {f"T_retrain={t['retrain_timesteps']}": (
            [r["sparsity"] for r in t["rounds"]], [r["accuracy_at_T"] for r in t["rounds"]])
         for t in tracks}, os.path.join(write_dir, "accuracy_vs_sparsity.png"),
        title=f"evaluated at T={timesteps}")
    print(markdown(summary))


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
