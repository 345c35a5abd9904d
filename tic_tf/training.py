"""Training a spiking network with BPTT into a run directory, resumable.

    from tic_tf.training import TrainConfig, train
    results = train(TrainConfig(epochs=15, model_dir="runs/digits"))

Everything lands in `model_dir`: flags.json, checkpoints/epoch-NNNN, metrics.jsonl,
tensorboard/, results.json and saved_model/. Training into a directory that holds a run
resumes it from its last complete checkpoint.
"""
import contextlib
import dataclasses
import json
import os
import random
import sys
import time

import keras
import numpy as np

from tic_tf import checkpoints, distribute, energy, preemption, surrogates
from tic_tf.atomic import write_json
from tic_tf.callbacks import (EnergyMonitor, EpochCheckpoint, FisherMonitor, MetricsLogger,
                              StopOnNonFiniteLoss, TimestepMonitor, read_metrics)
from tic_tf.data import (DataConfig, eval_dataset, first_examples, steps_per_epoch,
                         to_unit_range, train_dataset)
from tic_tf.distribute import DistributeConfig, check_batch_size
from tic_tf.errors import UserError
from tic_tf.losses import (AlphaLoss, LossSwitch, MeanLogitCrossEntropy, SwitchedLoss,
                           TETLoss, accuracy_metric, per_timestep_loss_metrics)
from tic_tf.models import (ARCHITECTURES, BATCH_NORM_MODES, PRECISIONS, build_model,
                           set_precision)
from tic_tf.neurons import DEFAULT_SHARPNESS, NEURONS, RESETS
from tic_tf.options import (augment, check_choices, check_paths, check_positive,
                            energy_table, flat_dict, integers, nested, option, require,
                            train_examples)
from tic_tf.preemption import PreemptionCheckpoint
from tic_tf.serving import export_saved_model


def _keep_checkpoints(values):
    if list(values) == ["all"]:
        return "all"
    return integers("keep_checkpoints", minimum=1)(values)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run takes; the defaults are the paper's (300 epochs, T=10)."""
    data: DataConfig = nested(DataConfig)
    distribute: DistributeConfig = nested(DistributeConfig)
    arch: str = option("resnet19", "Network architecture.", choices=sorted(ARCHITECTURES))
    width: float = option(1.0, "Channel width multiplier (1.0 = the paper's widths).")
    timesteps: int = option(10, "Number of timesteps T.")
    tau: float = option(2.0, "LIF membrane time constant; decay is 1 - 1/tau (> 0.5).")
    threshold: float = option(1.0, "LIF firing threshold.")
    neuron: str = option("lif", "Spiking neuron: lif (leaky, Eq. 1: decay 1 - 1/tau, input "
                         "scaled by 1/tau) or if (integrate-and-fire: no leak, no input "
                         "scaling; --tau unused).", choices=list(NEURONS))
    reset: str = option("hard", "After a spike the membrane is set to 0 (hard, the paper's) or "
                        "lowered by the threshold (soft).", choices=list(RESETS))
    detach_reset: bool = option(True, "Detach the membrane reset from the gradient.")
    surrogate: str = option("arctan", "Surrogate gradient of the spike (tic_tf.surrogates): "
                            "arctan (the paper's), sigmoid, fast_sigmoid, triangle, rectangle.",
                            choices=list(surrogates.SURROGATES))
    surrogate_sharpness: float = option(None, "Sharpness a of the surrogate gradient (larger: "
                                        "narrower and taller, integral 1); default: the "
                                        "surrogate's own, whose peak is 1 (pi for arctan, 4 "
                                        "sigmoid, 2 fast_sigmoid, 1 triangle and rectangle).",
                                        kind=float)
    batch_norm: str = option(
        "per_timestep", "How batch-norm treats time. per_timestep: each timestep normalised "
        "with its own batch statistics in training (the paper's code); shared: statistics "
        "pooled over all timesteps (SpikingJelly multi-step, tdBN); time_specific: "
        "per-timestep statistics kept for inference too (BNTT's statistics); bntt: and "
        "per-timestep scale and offset.", choices=list(BATCH_NORM_MODES))
    loss: str = option("ce", "ce: cross-entropy of the mean logits; alpha: (1/T) sum_t "
                       "|L_t - alpha| (Eq. 10), steering Fisher information; tet: the mean "
                       "over t of each timestep's own cross-entropy, plus an MSE term "
                       "(Deng et al. 2022).", choices=["ce", "alpha", "tet"])
    alpha: float = option(0.01, "alpha of --loss=alpha (paper, CIFAR10: 1e-3 low, 1e-2 "
                          "intermediate, 7e-2 high).")
    tet_lambda: float = option(1e-3, "Weight lambda of --loss=tet's MSE term, in [0, 1).")
    tet_target: float = option(1.0, "The value --loss=tet's MSE term pulls the logits to.")
    tet_from_epoch: int = option(1, "With --loss=tet: cross-entropy of the mean logits before "
                                 "this epoch, TET from it on (FTET's switch, Han et al. 2025); "
                                 "1: TET throughout.")
    tet_when_stable: float = option(None, "With --loss=tet and --fisher_every: cross-entropy "
                                    "until the information centroid moves less than this "
                                    "between two Fisher measurements, TET from the next epoch "
                                    "on (FTET's criterion).", kind=float)
    optimizer: str = option("sgd", "Optimizer.", choices=["sgd", "adam"])
    learning_rate: float = option(0.3, "Initial learning rate.")
    lr_base_batch: int = option(0, "Scale the learning rate linearly with the batch: rate = "
                                "learning_rate * batch_size / lr_base_batch (0: no scaling).")
    lr_schedule: str = option("cosine", "cosine: decay to 0 over all epochs; step: x0.1 at "
                              "each --lr_milestones epoch.",
                              choices=["cosine", "step", "constant"])
    lr_milestones: tuple = option((150, 225), "Epochs at which the step schedule decays.",
                                  parse=integers("lr_milestones", minimum=1))
    momentum: float = option(0.9, "SGD momentum.")
    weight_decay: float = option(5e-4, "Weight decay (Keras' decoupled form).")
    batch_size: int = option(128, "Global batch size (split over the strategy's replicas).")
    epochs: int = option(300, "Number of training epochs.")
    train_examples: int = train_examples(", a fixed subset for CPU-sized studies")
    test_examples: int = option(0, "Evaluate on the first this many test examples only "
                                "(0: all).")
    augment: bool = augment(", as in the paper")
    seed: int = option(0, "Seed for initial weights, shuffling and augmentation.")
    model_dir: str = option(None, "Run directory (default runs/<dataset>-<arch>-T<T>).",
                            kind=str, writes="directory")
    eval_every: int = option(1, "Evaluate on the test split every this many epochs.")
    keep_checkpoints: tuple = option((), "Epochs whose checkpoints are kept for later "
                                     "analysis (e.g. 20,120,300); the last two are always "
                                     "kept. 'all' keeps all.", parse=_keep_checkpoints)
    fisher_every: int = option(0, "Measure temporal Fisher information every this many "
                               "epochs on a fixed training subset (0: off).")
    fisher_samples: int = option(64, "Training images used by --fisher_every.")
    energy_every: int = option(0, "Count spike operations and energy per image on the first "
                               "--energy_samples test images every this many epochs (0: off)"
                               "; energy/ scalars in metrics.jsonl and TensorBoard.")
    energy_samples: int = option(64, "Test images used by --energy_every.")
    energy_table: str = energy_table()
    mixed_precision: str = option("none", "16-bit compute: bfloat16 (CPUs with AVX512-BF16/"
                                  "AMX, TPUs, recent GPUs) or float16 (GPUs, with loss "
                                  "scaling); the membrane, surrogate and logits stay float32.",
                                  choices=sorted(PRECISIONS))
    recompute: bool = option(False, "Recompute LIF membranes and spikes in the backward pass "
                             "instead of storing them (less memory for long T, about 5% "
                             "slower).")
    xla: bool = option(False, "Compile the training step with XLA (jit_compile); on CPU it "
                       "measured slower than TensorFlow's own kernels (docs/performance.md).")
    export: bool = option(True, "Write a SavedModel to <model_dir>/saved_model at the end.")
    verbose: int = option(None, "Keras progress output: 0 silent, 1 progress bar, 2 one line "
                          "per epoch (default: 1 on a terminal, else 2).", kind=int)

    def __post_init__(self):
        check_choices(self)
        check_paths(self)
        check_positive(self, "timesteps", "batch_size", "epochs", "eval_every",
                       "fisher_samples", "energy_samples")
        energy.energy_table(self.energy_table)
        require(self.width > 0, "--width must be positive.")
        require(self.tau > 0.5, "--tau must be > 0.5 (the decay 1 - 1/tau must stay above -1).")
        require(self.threshold > 0, "--threshold must be positive.")
        require(self.surrogate_sharpness is None or self.surrogate_sharpness > 0,
                "--surrogate_sharpness must be positive.")
        require(self.learning_rate > 0, "--learning_rate must be positive.")
        require(self.weight_decay >= 0, "--weight_decay must be >= 0.")
        require(self.alpha >= 0, "--alpha must be >= 0.")
        require(0 <= self.tet_lambda < 1, f"--tet_lambda must be in [0, 1), got "
                f"{self.tet_lambda}.")
        require(self.tet_from_epoch >= 1, f"--tet_from_epoch must be an epoch >= 1, got "
                f"{self.tet_from_epoch}.")
        require(self.tet_from_epoch == 1 or self.loss == "tet",
                "--tet_from_epoch switches to TET: it needs --loss=tet.")
        if self.tet_when_stable is not None:
            require(self.tet_when_stable > 0, f"--tet_when_stable must be positive, got "
                    f"{self.tet_when_stable}.")
            require(self.loss == "tet" and self.fisher_every > 0 and self.tet_from_epoch == 1,
                    "--tet_when_stable switches to TET when the Fisher monitor's centroid "
                    "settles: it needs --loss=tet and --fisher_every, and no --tet_from_epoch.")
        require(0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}.")
        require(self.seed >= 0, f"--seed must be >= 0, got {self.seed}.")
        require(all(m >= 1 for m in self.lr_milestones), "--lr_milestones must be epochs >= 1.")
        for name in ("lr_base_batch", "train_examples", "test_examples", "fisher_every",
                     "energy_every"):
            require(getattr(self, name) >= 0,
                    f"--{name} must be >= 0, got {getattr(self, name)}.")
        require(self.keep_checkpoints == "all" or all(
            isinstance(k, int) for k in self.keep_checkpoints),
            "--keep_checkpoints must be 'all' or a comma-separated list of epochs.")

    @property
    def sharpness(self):
        """--surrogate_sharpness, or the surrogate's default."""
        return (surrogates.DEFAULTS[self.surrogate] if self.surrogate_sharpness is None
                else self.surrogate_sharpness)

    @property
    def run_dir(self):
        return self.model_dir or os.path.join(
            "runs", f"{self.data.dataset}-{self.arch}-T{self.timesteps}")


DIAGNOSTIC_IMAGES = 256  # test images behind the per-epoch firing and per-timestep accuracy

# Settings that define a run: resuming with any of them changed is refused.
RUN_SETTINGS = ("dataset", "arch", "width", "timesteps", "neuron", "reset", "tau", "threshold",
                "detach_reset", "surrogate", "surrogate_sharpness", "batch_norm", "loss",
                "alpha", "tet_lambda", "tet_target", "tet_from_epoch", "tet_when_stable",
                "optimizer", "learning_rate", "lr_base_batch", "lr_schedule",
                "lr_milestones", "momentum", "weight_decay", "batch_size", "epochs", "seed",
                "mixed_precision", "train_examples", "test_examples", "augment")
# Their values in runs from before they existed (batch-norm then pooled over time).
SETTINGS_ADDED_LATER = {"batch_norm": "shared", "train_examples": 0, "test_examples": 0,
                        "augment": True, "surrogate_sharpness": DEFAULT_SHARPNESS,
                        "neuron": "lif", "reset": "hard", "surrogate": "arctan",
                        "tet_lambda": 1e-3, "tet_target": 1.0, "tet_from_epoch": 1,
                        "tet_when_stable": None}


def run_settings(config):
    settings = {**dataclasses.asdict(config), **dataclasses.asdict(config.data)}
    settings["lr_milestones"] = list(config.lr_milestones)
    settings["surrogate_sharpness"] = config.sharpness
    return {name: settings[name] for name in RUN_SETTINGS}


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
    # Runs written before the settings became a config kept the milestones as strings.
    previous["lr_milestones"] = [int(m) for m in previous.get("lr_milestones", [])]
    changed = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
    if changed:
        listing = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise UserError(f"{run_dir} holds a run with other settings ({listing}); pass the "
                        "same flags to resume it, or choose a new --model_dir.")


def make_optimizer(config, steps_per_epoch):
    """The optimizer and learning-rate schedule `config` asks for."""
    total_steps = config.epochs * steps_per_epoch
    rate = config.learning_rate
    if config.lr_base_batch:  # the linear scaling rule (Goyal et al., 2017)
        rate *= config.batch_size / config.lr_base_batch
        print(f"Learning rate {rate:g} (learning_rate x {config.batch_size} / "
              f"{config.lr_base_batch}).")
    if config.lr_schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps=total_steps)
    elif config.lr_schedule == "step":
        milestones = sorted(config.lr_milestones)
        rate = keras.optimizers.schedules.PiecewiseConstantDecay(
            [m * steps_per_epoch for m in milestones],
            [rate * 0.1 ** i for i in range(len(milestones) + 1)])
    decay = config.weight_decay or None
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=config.momentum, weight_decay=decay)
    return keras.optimizers.Adam(rate, weight_decay=decay)


def restore_latest(checkpoint_dir, model, epochs):
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
        print(f"Resuming from {path} (epoch {epoch} of {epochs}).")
        return epoch
    if found:
        raise UserError(f"No checkpoint in {checkpoint_dir} can be read; move it away to "
                        "start the run over.")
    return 0


def model_config(config, spec):
    """The `build_model` arguments of `config` on data described by `spec`."""
    return dict(arch=config.arch, num_classes=spec.num_classes, timesteps=config.timesteps,
                input_shape=list(spec.image_shape), width=config.width, tau=config.tau,
                threshold=config.threshold, detach_reset=config.detach_reset,
                mean=list(spec.mean), std=list(spec.std), batch_norm=config.batch_norm,
                neuron=config.neuron, reset=config.reset, surrogate=config.surrogate,
                surrogate_sharpness=config.sharpness, recompute=config.recompute)


def compiled_model(config, strategy, arguments, steps_per_epoch):
    """The model built from `arguments` and compiled with its loss, metrics and optimizer, in
    the strategy's scope."""
    with strategy.scope():
        model = build_model(**arguments)
        metrics = [accuracy_metric()]
        if config.loss == "alpha":  # log every L_t, the quantity the alpha loss steers
            loss = AlphaLoss(config.alpha)
            metrics += per_timestep_loss_metrics(config.timesteps)
        elif config.loss == "tet":
            loss = TETLoss(config.tet_lambda, config.tet_target)
            if config.tet_from_epoch > 1 or config.tet_when_stable:
                loss = SwitchedLoss(MeanLogitCrossEntropy(), loss)
            metrics += per_timestep_loss_metrics(config.timesteps)
        else:
            loss = MeanLogitCrossEntropy()
        model.compile(make_optimizer(config, steps_per_epoch), loss=loss, metrics=metrics,
                      jit_compile=config.xla)
    return model


def make_callbacks(config, arrays, run_dir, arguments, first_step, start_epoch, verbose,
                   preemptible, centroids=()):
    """The training callbacks; `centroids`: the (epoch, information centroid) measurements of
    the epochs a resumed run has finished (for --tet_when_stable)."""
    keep = (range(1, config.epochs + 1) if config.keep_checkpoints == "all"
            else config.keep_checkpoints)
    checkpoint_dir = os.path.join(run_dir, "checkpoints")
    # The progress bar goes first so that it prints before monitors add their values to logs.
    callbacks = [keras.callbacks.ProgbarLogger()] if verbose else []
    callbacks.append(StopOnNonFiniteLoss())
    monitors = [TimestepMonitor(to_unit_range(arrays.x_test[:DIAGNOSTIC_IMAGES]),
                                arrays.y_test[:DIAGNOSTIC_IMAGES],
                                os.path.join(run_dir, "tensorboard"))]
    if config.fisher_every:
        count = min(config.fisher_samples, len(arrays.x_train))
        monitors.append(FisherMonitor(to_unit_range(arrays.x_train[:count]),
                                      arrays.y_train[:count], config.fisher_every,
                                      os.path.join(run_dir, "tensorboard"),
                                      verbose=bool(verbose)))
    if config.energy_every:
        monitors.append(EnergyMonitor(to_unit_range(arrays.x_test[:config.energy_samples]),
                                      config.energy_every, config.energy_table))
    callbacks += monitors
    if config.tet_from_epoch > 1:
        callbacks.append(LossSwitch(epoch=config.tet_from_epoch))
    elif config.tet_when_stable:
        callbacks.append(LossSwitch(stable_within=config.tet_when_stable, history=centroids))
    callbacks.append(EpochCheckpoint(checkpoint_dir, arguments, keep))
    if preemptible:
        callbacks.append(PreemptionCheckpoint(checkpoint_dir, arguments, first_step))
    callbacks.append(MetricsLogger(run_dir, start_epoch, sources=monitors))
    return callbacks


def train(config):
    """Train (or resume) the run `config` describes; returns its results.json record."""
    strategy = distribute.make_strategy(config.distribute.strategy,
                                        config.distribute.tpu)  # first: sets up collectives
    settings = run_settings(config)
    run_dir = config.run_dir
    check_run_dir(run_dir, settings)
    check_batch_size(strategy, config.batch_size)
    spec = config.data.spec
    arrays = first_examples(config.data.load(), config.train_examples, config.test_examples)
    steps = steps_per_epoch(len(arrays.x_train), config.batch_size)
    with seeded_with_precision(config.seed, config.mixed_precision):
        arguments = model_config(config, spec)
        model = compiled_model(config, strategy, arguments, steps)
        if strategy.num_replicas_in_sync > 1:
            print(f"Training on {strategy.num_replicas_in_sync} replicas, "
                  f"{config.batch_size // strategy.num_replicas_in_sync} examples each per "
                  "step.")
        with strategy.scope(), distribute.output_dir(strategy, run_dir) as out_dir:
            return _train(config, strategy, model, arguments, arrays, run_dir, out_dir,
                          settings)


@contextlib.contextmanager
def seeded_with_precision(seed, precision):
    """Within: the random generators seeded with `seed` (`keras.utils.set_random_seed`) and
    Keras' dtype policy set to `precision`; after: Python's and NumPy's generator states and
    the policy as they were, so that a training run leaves its caller's process alone
    (TensorFlow's global seed stays `seed`: it has no public getter to restore from)."""
    saved = random.getstate(), np.random.get_state(), keras.config.dtype_policy()
    keras.utils.set_random_seed(seed)
    set_precision(precision)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        keras.config.set_dtype_policy(saved[2])


def _train(config, strategy, model, arguments, arrays, run_dir, out_dir, settings):
    """Resume from `run_dir`'s checkpoints, train, evaluate and export into `out_dir`."""
    spec = config.data.spec
    checkpoint_dir = os.path.join(run_dir, "checkpoints")
    position = preemption.restore(checkpoint_dir, model)  # (epoch, step) if preempted
    start_epoch = (position[0] if position
                   else restore_latest(checkpoint_dir, model, config.epochs))
    first_step = position[1] if position else 0
    write_json(os.path.join(out_dir, "flags.json"), {
        "run_settings": settings, "model": arguments, "all_flags": flat_settings(config)})

    test_data = eval_dataset(arrays.x_test, arrays.y_test, config.batch_size)
    verbose = config.verbose if config.verbose is not None else (
        1 if sys.stdout.isatty() else 2)
    # Workers preempted one by one would leave the others waiting in a collective: a
    # multi-worker job resumes from its epoch checkpoints instead.
    centroids = [(r["epoch"], r["fisher/centroid"])
                 for r in read_metrics(os.path.join(run_dir, "metrics.jsonl"))
                 if r["epoch"] <= start_epoch and "fisher/centroid" in r]
    callbacks = make_callbacks(config, arrays, out_dir, arguments, first_step, start_epoch,
                               verbose, preemptible=not distribute.is_multi_worker(strategy),
                               centroids=centroids)
    fit = dict(validation_data=test_data, validation_freq=config.eval_every,
               callbacks=callbacks, verbose=verbose)
    started = time.perf_counter()
    if first_step:  # finish the preempted epoch from its next step, then train on as usual
        rest, steps = train_dataset(arrays.x_train, arrays.y_train, spec, config.batch_size,
                                    config.seed, start_epoch, start_epoch + 1, config.augment)
        distribute.fit(model, strategy, rest.skip(first_step), start_epoch + 1, start_epoch,
                       steps - first_step, **fit)
        start_epoch += 1
    if start_epoch < config.epochs:
        train_data, steps = train_dataset(arrays.x_train, arrays.y_train, spec,
                                          config.batch_size, config.seed, start_epoch,
                                          config.epochs, config.augment)
        distribute.fit(model, strategy, train_data, config.epochs, start_epoch, steps, **fit)
    print(f"Training done in {time.perf_counter() - started:.0f} s.")
    scores = distribute.evaluate(model, strategy, test_data)
    loss, accuracy = scores["loss"], scores["accuracy"]
    results = {"epochs": config.epochs, "test_loss": loss, "test_accuracy": accuracy,
               "test_examples": len(arrays.x_test),
               "weights_fingerprint": checkpoints.fingerprint(model)}
    write_json(os.path.join(out_dir, "results.json"), results)
    print(f"Test accuracy {accuracy:.4f} (loss {loss:.4f}) on {len(arrays.x_test)} images.")
    print(f"Weights fingerprint {results['weights_fingerprint']}")
    if config.export:
        path = export_saved_model(model, os.path.join(out_dir, "saved_model"))
        print(f"SavedModel written to {path}")
    print(f"Run directory {run_dir}: metrics.jsonl (one record per epoch), checkpoints/, "
          f"results.json. Watch it with: tensorboard --logdir "
          f"{os.path.join(run_dir, 'tensorboard')}")
    return results


def flat_settings(config):
    """Every setting of the run by name, as flags.json records them."""
    values = flat_dict(config)
    if values["keep_checkpoints"] == "all":
        values["keep_checkpoints"] = ["all"]
    return dict(sorted(values.items()))
