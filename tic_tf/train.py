"""Train a spiking network with BPTT.

    python -m tic_tf.train --dataset=svhn --timesteps=10
    python -m tic_tf.train --flagfile=flags/quick_cpu.cfg

Everything lands in --model_dir: flags.json, checkpoints/epoch-NNNN, metrics.jsonl,
tensorboard/, results.json and saved_model/. Running the same command again resumes from the
last complete checkpoint.
"""
import json
import os
import sys
import time

import keras
from absl import flags

from tic_tf import checkpoints, cli, distribute, preemption
from tic_tf.atomic import write_json
from tic_tf.callbacks import (EpochCheckpoint, FisherMonitor, MetricsLogger,
                              StopOnNonFiniteLoss, TimestepMonitor)
from tic_tf.data import (eval_dataset, first_examples, get_spec, load_arrays, steps_per_epoch,
                         to_unit_range, train_dataset)
from tic_tf.distribute import check_batch_size, make_strategy
from tic_tf.errors import UserError
from tic_tf.losses import (AlphaLoss, MeanLogitCrossEntropy, accuracy_metric,
                           per_timestep_loss_metrics)
from tic_tf.models import (ARCHITECTURES, BATCH_NORM_MODES, PRECISIONS, build_model,
                           set_precision)
from tic_tf.neurons import recompute_states
from tic_tf.preemption import PreemptionCheckpoint
from tic_tf.serving import export_saved_model

cli.define_data_flags()
distribute.define_flags()
flags.DEFINE_enum("arch", "resnet19", sorted(ARCHITECTURES), "Network architecture.")
flags.DEFINE_float("width", 1.0, "Channel width multiplier (1.0 = the paper's widths).")
flags.DEFINE_integer("timesteps", 10, "Number of timesteps T.", lower_bound=1)
flags.DEFINE_float("tau", 2.0, "LIF membrane time constant; decay is 1 - 1/tau (> 0.5).")
flags.DEFINE_float("threshold", 1.0, "LIF firing threshold.")
flags.DEFINE_boolean("detach_reset", True, "Detach the membrane reset from the gradient.")
flags.DEFINE_enum("batch_norm", "per_timestep", list(BATCH_NORM_MODES),
                  "How batch-norm treats time. per_timestep: each timestep normalised with its "
                  "own batch statistics in training (the paper's code); shared: statistics "
                  "pooled over all timesteps (SpikingJelly multi-step, tdBN); time_specific: "
                  "per-timestep statistics kept for inference too (BNTT's statistics); bntt: "
                  "and per-timestep scale and offset.")
flags.DEFINE_enum("loss", "ce", ["ce", "alpha"], "ce: cross-entropy of the mean logits; "
                  "alpha: (1/T) sum_t |L_t - alpha| (Eq. 10), steering Fisher information.")
flags.DEFINE_float("alpha", 0.01, "alpha of --loss=alpha (paper, CIFAR10: 1e-3 low, 1e-2 "
                   "intermediate, 7e-2 high).", lower_bound=0.0)
flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adam"], "Optimizer.")
flags.DEFINE_float("learning_rate", 0.3, "Initial learning rate.")
flags.DEFINE_integer("lr_base_batch", 0, "Scale the learning rate linearly with the batch: "
                     "rate = learning_rate * batch_size / lr_base_batch (0: no scaling).",
                     lower_bound=0)
flags.DEFINE_enum("lr_schedule", "cosine", ["cosine", "step", "constant"],
                  "cosine: decay to 0 over all epochs; step: x0.1 at each --lr_milestones epoch.")
flags.DEFINE_list("lr_milestones", ["150", "225"], "Epochs at which the step schedule decays.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_float("weight_decay", 5e-4, "Weight decay (Keras' decoupled form).")
flags.DEFINE_integer("batch_size", 128, "Global batch size (split over the strategy's "
                     "replicas).", lower_bound=1)
flags.DEFINE_integer("epochs", 300, "Number of training epochs.", lower_bound=1)
flags.DEFINE_integer("train_examples", 0, "Train on the first this many training examples "
                     "only (0: all), a fixed subset for CPU-sized studies.", lower_bound=0)
flags.DEFINE_integer("test_examples", 0, "Evaluate on the first this many test examples only "
                     "(0: all).", lower_bound=0)
flags.DEFINE_boolean("augment", True, "Random crop (pad 4) and, where the data set allows, "
                     "horizontal flip of training images, as in the paper.")
flags.DEFINE_integer("seed", 0, "Seed for initial weights, shuffling and augmentation.")
flags.DEFINE_string("model_dir", None, "Run directory (default runs/<dataset>-<arch>-T<T>).")
flags.DEFINE_integer("eval_every", 1, "Evaluate on the test split every this many epochs.",
                     lower_bound=1)
flags.DEFINE_list("keep_checkpoints", [], "Epochs whose checkpoints are kept for later "
                  "analysis (e.g. 20,120,300); the last two are always kept. 'all' keeps all.")
flags.DEFINE_integer("fisher_every", 0, "Measure temporal Fisher information every this many "
                     "epochs on a fixed training subset (0: off).", lower_bound=0)
flags.DEFINE_integer("fisher_samples", 64, "Training images used by --fisher_every.",
                     lower_bound=1)
flags.DEFINE_enum("mixed_precision", "none", sorted(PRECISIONS), "16-bit compute: bfloat16 "
                  "(CPUs with AVX512-BF16/AMX, TPUs, recent GPUs) or float16 (GPUs, with loss "
                  "scaling); the membrane, surrogate and logits stay float32.")
flags.DEFINE_boolean("recompute", False, "Recompute LIF membranes and spikes in the backward "
                     "pass instead of storing them (less memory for long T, about 5% slower).")
flags.DEFINE_boolean("xla", False, "Compile the training step with XLA (jit_compile); on CPU "
                     "it measured slower than TensorFlow's own kernels (see the README).")
flags.DEFINE_boolean("export", True, "Write a SavedModel to <model_dir>/saved_model at the end.")
flags.DEFINE_integer("verbose", None, "Keras progress output: 0 silent, 1 progress bar, 2 one "
                     "line per epoch (default: 1 on a terminal, else 2).")
FLAGS = flags.FLAGS

flags.register_validator("width", lambda w: w > 0, "--width must be positive.")
flags.register_validator("tau", lambda t: t > 0.5,
                         "--tau must be > 0.5 (the decay 1 - 1/tau must stay above -1).")
flags.register_validator("threshold", lambda v: v > 0, "--threshold must be positive.")
flags.register_validator("learning_rate", lambda v: v > 0, "--learning_rate must be positive.")
flags.register_validator("weight_decay", lambda v: v >= 0, "--weight_decay must be >= 0.")
flags.register_validator("lr_milestones", lambda ms: all(m.isdigit() for m in ms),
                         "--lr_milestones must be a comma-separated list of epochs.")
flags.register_validator("keep_checkpoints",
                         lambda ks: ks == ["all"] or all(k.isdigit() for k in ks),
                         "--keep_checkpoints must be 'all' or a comma-separated list of epochs.")

DIAGNOSTIC_IMAGES = 256  # test images behind the per-epoch firing and per-timestep accuracy

# Settings that define a run: resuming with any of them changed is refused.
RUN_SETTINGS = ("dataset", "arch", "width", "timesteps", "tau", "threshold", "detach_reset",
                "batch_norm", "loss", "alpha", "optimizer", "learning_rate", "lr_base_batch", "lr_schedule",
                "lr_milestones", "momentum", "weight_decay", "batch_size", "epochs", "seed",
                "mixed_precision", "train_examples", "test_examples", "augment")
# Their values in runs from before they existed (batch-norm then pooled over time).
SETTINGS_ADDED_LATER = {"batch_norm": "shared", "train_examples": 0, "test_examples": 0,
                        "augment": True}
OTHER_FLAGS = ("data_dir", "manual_dir", "data_file", "model_dir", "eval_every",
               "keep_checkpoints", "fisher_every", "fisher_samples", "strategy", "tpu",
               "recompute", "xla", "export", "verbose")


def run_settings():
    return {name: FLAGS[name].value for name in RUN_SETTINGS}


def check_run_dir(run_dir, settings):
    """Refuse a run directory that holds a run with other settings."""
    path = os.path.join(run_dir, "flags.json")
    if not os.path.exists(path):
        return
    try:
        with open(path) as handle:
            previous = json.load(handle)["run_settings"]
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"{path} is unreadable ({error}); use a new --model_dir.") from error
    previous = {**SETTINGS_ADDED_LATER, **previous}
    changed = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
    if changed:
        listing = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise UserError(f"{run_dir} holds a run with other settings ({listing}); pass the "
                        "same flags to resume it, or choose a new --model_dir.")


def make_optimizer(steps_per_epoch):
    total_steps = FLAGS.epochs * steps_per_epoch
    rate = FLAGS.learning_rate
    if FLAGS.lr_base_batch:  # the linear scaling rule (Goyal et al., 2017)
        rate *= FLAGS.batch_size / FLAGS.lr_base_batch
        print(f"Learning rate {rate:g} (--learning_rate x {FLAGS.batch_size} / "
              f"{FLAGS.lr_base_batch}).")
    if FLAGS.lr_schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps=total_steps)
    elif FLAGS.lr_schedule == "step":
        milestones = sorted(int(m) for m in FLAGS.lr_milestones)
        rate = keras.optimizers.schedules.PiecewiseConstantDecay(
            [m * steps_per_epoch for m in milestones],
            [rate * 0.1 ** i for i in range(len(milestones) + 1)])
    decay = FLAGS.weight_decay or None
    if FLAGS.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=FLAGS.momentum, weight_decay=decay)
    return keras.optimizers.Adam(rate, weight_decay=decay)


def restore_latest(checkpoint_dir, model):
    """Restore the newest checkpoint that reads back; returns its epoch (0: none yet).

    A corrupt or truncated checkpoint is reported and skipped in favour of the one before.
    """
    found = checkpoints.list_epochs(checkpoint_dir)
    for epoch, path in reversed(found):
        try:
            checkpoints.restore(path, model, model.optimizer)  # maybe loss-scaled
        except UserError as error:
            print(f"warning: skipping unreadable checkpoint: {error}", file=sys.stderr)
            continue
        print(f"Resuming from {path} (epoch {epoch} of {FLAGS.epochs}).")
        return epoch
    if found:
        raise UserError(f"No checkpoint in {checkpoint_dir} can be read; move it away to "
                        "start the run over.")
    return 0


def build(strategy, spec, steps):
    """The compiled model (in the strategy's scope) and the `build_model` arguments."""
    model_config = dict(arch=FLAGS.arch, num_classes=spec.num_classes,
                        timesteps=FLAGS.timesteps, input_shape=list(spec.image_shape),
                        width=FLAGS.width, tau=FLAGS.tau, threshold=FLAGS.threshold,
                        detach_reset=FLAGS.detach_reset, mean=list(spec.mean),
                        std=list(spec.std), batch_norm=FLAGS.batch_norm)
    with strategy.scope():
        model = build_model(**model_config)
        metrics = [accuracy_metric()]
        if FLAGS.loss == "alpha":  # log every L_t, the quantity the alpha loss steers
            loss = AlphaLoss(FLAGS.alpha)
            metrics += per_timestep_loss_metrics(FLAGS.timesteps)
        else:
            loss = MeanLogitCrossEntropy()
        model.compile(make_optimizer(steps), loss=loss, metrics=metrics, jit_compile=FLAGS.xla)
    return model, model_config


def make_callbacks(arrays, run_dir, model_config, first_step, start_epoch, verbose,
                   preemptible):
    keep = (range(1, FLAGS.epochs + 1) if FLAGS.keep_checkpoints == ["all"]
            else [int(k) for k in FLAGS.keep_checkpoints])
    checkpoint_dir = os.path.join(run_dir, "checkpoints")
    # The progress bar goes first so that it prints before monitors add their values to logs.
    callbacks = [keras.callbacks.ProgbarLogger()] if verbose else []
    callbacks.append(StopOnNonFiniteLoss())
    monitors = [TimestepMonitor(to_unit_range(arrays.x_test[:DIAGNOSTIC_IMAGES]),
                                arrays.y_test[:DIAGNOSTIC_IMAGES],
                                os.path.join(run_dir, "tensorboard"))]
    if FLAGS.fisher_every:
        count = min(FLAGS.fisher_samples, len(arrays.x_train))
        monitors.append(FisherMonitor(to_unit_range(arrays.x_train[:count]),
                                      arrays.y_train[:count], FLAGS.fisher_every,
                                      os.path.join(run_dir, "tensorboard"),
                                      verbose=bool(verbose)))
    callbacks += monitors
    callbacks.append(EpochCheckpoint(checkpoint_dir, model_config, keep))
    if preemptible:
        callbacks.append(PreemptionCheckpoint(checkpoint_dir, model_config, first_step))
    callbacks.append(MetricsLogger(run_dir, start_epoch, sources=monitors))
    return callbacks


def main(argv):
    strategy = make_strategy(FLAGS.strategy, FLAGS.tpu)  # first: it sets up the collectives
    settings = run_settings()
    run_dir = FLAGS.model_dir or os.path.join(
        "runs", f"{FLAGS.dataset}-{FLAGS.arch}-T{FLAGS.timesteps}")
    check_run_dir(run_dir, settings)
    check_batch_size(strategy, FLAGS.batch_size)
    spec = get_spec(FLAGS.dataset)
    arrays = first_examples(load_arrays(spec, FLAGS.data_dir, FLAGS.manual_dir, FLAGS.data_file),
                            FLAGS.train_examples, FLAGS.test_examples)
    steps = steps_per_epoch(len(arrays.x_train), FLAGS.batch_size)
    keras.utils.set_random_seed(FLAGS.seed)
    set_precision(FLAGS.mixed_precision)
    model, model_config = build(strategy, spec, steps)
    if strategy.num_replicas_in_sync > 1:
        print(f"Training on {strategy.num_replicas_in_sync} replicas, "
              f"{FLAGS.batch_size // strategy.num_replicas_in_sync} examples each per step.")
    with strategy.scope(), distribute.output_dir(strategy, run_dir) as out_dir, \
            recompute_states(FLAGS.recompute):
        train(strategy, model, model_config, spec, arrays, run_dir, out_dir, settings)


def train(strategy, model, model_config, spec, arrays, run_dir, out_dir, settings):
    """Resume from `run_dir`'s checkpoints, train, evaluate and export into `out_dir`."""
    checkpoint_dir = os.path.join(run_dir, "checkpoints")
    position = preemption.restore(checkpoint_dir, model)  # (epoch, step) if preempted
    start_epoch = position[0] if position else restore_latest(checkpoint_dir, model)
    first_step = position[1] if position else 0
    write_json(os.path.join(out_dir, "flags.json"), {
        "run_settings": settings, "model": model_config,
        "all_flags": {name: FLAGS[name].value for name in sorted(RUN_SETTINGS + OTHER_FLAGS)}})

    test_data = eval_dataset(arrays.x_test, arrays.y_test, FLAGS.batch_size)
    verbose = FLAGS.verbose if FLAGS.verbose is not None else (1 if sys.stdout.isatty() else 2)
    # Workers preempted one by one would leave the others waiting in a collective: a
    # multi-worker job resumes from its epoch checkpoints instead.
    callbacks = make_callbacks(arrays, out_dir, model_config, first_step, start_epoch, verbose,
                               preemptible=not distribute.is_multi_worker(strategy))
    fit = dict(validation_data=test_data, validation_freq=FLAGS.eval_every,
               callbacks=callbacks, verbose=verbose)
    started = time.perf_counter()
    if first_step:  # finish the preempted epoch from its next step, then train on as usual
        rest, steps = train_dataset(arrays.x_train, arrays.y_train, spec, FLAGS.batch_size,
                                    FLAGS.seed, start_epoch, start_epoch + 1, FLAGS.augment)
        distribute.fit(model, strategy, rest.skip(first_step), start_epoch + 1, start_epoch,
                       steps - first_step, **fit)
        start_epoch += 1
    if start_epoch < FLAGS.epochs:
        train_data, steps = train_dataset(arrays.x_train, arrays.y_train, spec, FLAGS.batch_size,
                                           FLAGS.seed, start_epoch, FLAGS.epochs,
                                           FLAGS.augment)
        distribute.fit(model, strategy, train_data, FLAGS.epochs, start_epoch, steps, **fit)
    print(f"Training done in {time.perf_counter() - started:.0f} s.")
    scores = distribute.evaluate(model, strategy, test_data)
    loss, accuracy = scores["loss"], scores["accuracy"]
    write_json(os.path.join(out_dir, "results.json"),
               {"epochs": FLAGS.epochs, "test_loss": loss, "test_accuracy": accuracy,
                "test_examples": len(arrays.x_test)})
    print(f"Test accuracy {accuracy:.4f} (loss {loss:.4f}) on {len(arrays.x_test)} images.")
    print(f"Weights fingerprint {checkpoints.fingerprint(model)}")
    if FLAGS.export:
        path = export_saved_model(model, os.path.join(out_dir, "saved_model"))
        print(f"SavedModel written to {path}")
    print(f"Run directory {run_dir}: metrics.jsonl (one record per epoch), checkpoints/, "
          f"results.json. Watch it with: tensorboard --logdir {os.path.join(run_dir, 'tensorboard')}")


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
