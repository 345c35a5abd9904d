"""Evaluation of checkpoints: a Table-1-style robustness report (docs/method.md), accuracy per
timestep and early-exit curves.

    from tic_tf.robustness import EvaluationConfig, evaluate
    rows = evaluate(EvaluationConfig(checkpoints=("runs/alpha_low",), output_dir="reports"))

Writes report.md and report.json to `output_dir`: accuracy per model and evaluation, and the
drop from clean accuracy. Defaults are the paper's: Gaussian noise at 50% of the image's l2
norm, blur through half the image side, FGSM eps 8/255, PGD eps 8/255, step 4/255, 10
iterations. fgsm_window / pgd_window perturb only the timesteps `window` = (start, width).
`attack_surrogates` re-runs the attacks through other surrogate gradients and flags gradient
obfuscation. "per_timestep" adds each model's accuracy from timesteps 1..t and from t alone
(per_timestep.png); "early_exit" its accuracy against the mean timesteps used by the
`exit_policy` at each of `exit_thresholds`, with the oracle bound and the Fisher information
centroid of `exit_fisher_samples` training images (early_exit.png); "energy" the operations
per layer and timestep and the energy per image under `energy_table`, against the equivalent
ANN, and with early exit at each threshold where "early_exit" is evaluated too (energy.png).
"""
import dataclasses
import os

import numpy as np
import tensorflow as tf

from tic_tf import checkpoints, early_exit, energy, plots, surrogates
from tic_tf.attacks import attacked_logits, fgsm, pgd
from tic_tf.atomic import write_json, write_text
from tic_tf.compiled import cached, function
from tic_tf.corruptions import blur, blur_size, check_window, gaussian_noise
from tic_tf.data import DataConfig, to_unit_range
from tic_tf.diagnostics import TimestepProbe
from tic_tf.errors import UserError
from tic_tf.fisher import temporal_fisher
from tic_tf.losses import mean_logits
from tic_tf.models import timesteps_of
from tic_tf.options import (check_choices, check_paths, check_positive, energy_table,
                            eval_samples, integers, nested, numbers, option, output_dir, require,
                            run_timesteps, seed, xla)

PERTURBATIONS = ("clean", "gaussian", "blur", "fgsm", "pgd", "fgsm_window", "pgd_window")
ATTACKS = ("fgsm", "pgd", "fgsm_window", "pgd_window")
TIME_STUDIES = ("per_timestep", "early_exit", "energy")  # over timesteps, not one accuracy
EVALUATIONS = PERTURBATIONS + TIME_STUDIES


def surrogate_list(values):
    """The `parse` of --attack_surrogates: (name or None, sharpness or None) per value."""
    try:
        return tuple(surrogates.parse(value) for value in values)
    except ValueError as error:
        raise UserError(f"--attack_surrogates: {error}") from None


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """Which checkpoints to evaluate under which perturbations."""
    checkpoints: tuple = option((), "Checkpoint or run directories (a run's newest "
                                "checkpoint), one model each.")
    output_dir: str = output_dir("report.md and report.json")
    data: DataConfig = nested(DataConfig)
    evaluations: tuple = option(("clean", "gaussian", "blur", "fgsm", "pgd"),
                                f"Any of {', '.join(EVALUATIONS)}.", choices=EVALUATIONS)
    eps: float = option(8 / 255, "l-infinity radius of FGSM and PGD, in [0, 1] pixels.")
    pgd_step: float = option(4 / 255, "PGD step size.")
    pgd_iterations: int = option(10, "PGD iterations.")
    random_start: bool = option(False, "Start PGD at a random point of the eps-ball.")
    noise: float = option(0.5, "Gaussian noise l2 norm as a fraction of the image's.")
    blur_size: int = option(None, "Blur: bilinear downsampling to this size and back "
                            "(default: half the image side, 16 for 32x32 images as in the "
                            "paper).", kind=int)
    window: tuple = option((1, 2), "start,width of the timesteps the *_window attacks perturb "
                           "(1-based).", parse=integers("window", minimum=1))
    attack_surrogates: tuple = option((), "Other surrogate gradients for the attacks, each a "
                                      "sharpness of the model's own surrogate (e.g. 1.57), "
                                      "a surrogate at its default sharpness (sigmoid) or "
                                      "both (sigmoid:8); see tic_tf.surrogates.",
                                      parse=surrogate_list)
    obfuscation_drop: float = option(0.05, "Flag a model whose attacked accuracy falls by "
                                     "more than this (absolute) under another surrogate.")
    exit_policy: str = option("confidence", "Early exit: stop an input at the first timestep "
                              "whose accumulated softmax has max probability >= threshold "
                              "(confidence), entropy <= threshold (entropy) or top-1 minus "
                              "top-2 probability >= threshold (margin).",
                              choices=early_exit.POLICIES)
    exit_thresholds: tuple = option((0.5, 0.7, 0.8, 0.9, 0.95, 0.99),
                                    "Early-exit thresholds to sweep.",
                                    parse=numbers("exit_thresholds"))
    exit_fisher_samples: int = option(128, "Training images of the Fisher information "
                                      "centroid that early_exit reports beside the mean exit "
                                      "timestep (0: none).")
    energy_table: str = energy_table()
    eval_samples: int = eval_samples()
    batch_size: int = option(64, "Batch size.")
    timesteps: int = run_timesteps()
    seed: int = seed("noise and random starts")
    xla: bool = xla(False, "On CPU the attacks and predictions ran 1.2-2x slower with it.")

    def __post_init__(self):
        check_choices(self)
        check_paths(self)
        require(self.checkpoints and self.output_dir, "checkpoints and output_dir are "
                "required.")
        require(0 <= self.eps <= 1, f"--eps must be in [0, 1] (pixels are in [0, 1]), got "
                f"{self.eps}.")
        require(self.pgd_step >= 0, f"--pgd_step must be >= 0, got {self.pgd_step}.")
        require(self.noise >= 0, f"--noise must be >= 0, got {self.noise}.")
        require(self.obfuscation_drop >= 0,
                f"--obfuscation_drop must be >= 0, got {self.obfuscation_drop}.")
        check_positive(self, "pgd_iterations", "eval_samples", "batch_size", "timesteps",
                       "blur_size")
        require(len(self.window) == 2 and min(self.window) >= 1,
                "--window takes two positive integers: start,width.")
        require(self.exit_thresholds, "--exit_thresholds needs at least one threshold.")
        require(self.exit_fisher_samples >= 0, "--exit_fisher_samples must be >= 0.")
        energy.energy_table(self.energy_table)


def predictions(model, window, jit_compile):
    """Compiled: predicted classes of (possibly time-windowed) adversarial inputs."""
    return cached(model, ("predict", window, jit_compile), lambda: function(
        lambda adversarial, clean: tf.argmax(mean_logits(
            attacked_logits(model, adversarial, clean, window)), -1, output_type=tf.int32),
        jit_compile=jit_compile))


def perturb(config, name, model, images, labels, index, surrogate):
    """The perturbed batch for one evaluation, and the window it applies to."""
    if name == "clean":
        return images, None
    if name == "gaussian":
        return gaussian_noise(images, config.noise, seed=(config.seed, index)), None
    if name == "blur":
        return blur(images, config.blur_size), None
    attack_window = config.window if name.endswith("_window") else None
    common = dict(window=attack_window, surrogate=surrogate, jit_compile=config.xla)
    if name.startswith("fgsm"):
        return fgsm(model, images, labels, config.eps, **common), attack_window
    return pgd(model, images, labels, config.eps, config.pgd_step, config.pgd_iterations,
               config.random_start, seed=(config.seed, index), **common), attack_window


def accuracy(config, name, model, images, labels, surrogate=None):
    """Accuracy of `model` on `images` under the evaluation `name`."""
    correct, size = 0, config.batch_size
    for index, start in enumerate(range(0, len(images), size)):
        clean = tf.constant(images[start:start + size])
        batch_labels = labels[start:start + size]
        perturbed, used_window = perturb(config, name, model, clean, batch_labels, index,
                                         surrogate)
        predicted = predictions(model, used_window, config.xla)(perturbed, clean)
        correct += int(np.sum(predicted.numpy() == batch_labels))
    return correct / len(images)


def per_timestep_logits(model, images, batch_size):
    """[N, T, classes] logits of `model` in inference mode."""
    return np.concatenate([model(images[start:start + batch_size], training=False).numpy()
                           for start in range(0, len(images), batch_size)])


def time_studies(config, model, images, labels, fisher_data):
    """The per_timestep and early_exit entries of a model's report row."""
    results = {}
    if "per_timestep" in config.evaluations:
        probe = TimestepProbe(model)(images, labels, batch_size=config.batch_size)
        results["per_timestep"] = {"accuracy_upto": probe.accuracy_upto.tolist(),
                                   "accuracy_at": probe.accuracy_at.tolist()}
    counts = None
    if "energy" in config.evaluations:
        counts = energy.operation_counts(model, images, config.batch_size)
        results["energy"] = counts.to_json(config.energy_table)
    if "early_exit" in config.evaluations:
        logits = per_timestep_logits(model, images, config.batch_size)
        curve = early_exit.sweep(logits, labels, config.exit_policy,
                                 config.exit_thresholds).to_json()
        results["early_exit"] = curve
        if counts is not None:
            exits = [early_exit.exit_timesteps(logits, config.exit_policy, threshold)
                     for threshold in config.exit_thresholds]
            exits += [None, early_exit.oracle_timesteps(logits, labels)]  # full T, oracle
            for point, used in zip(curve["points"] + [curve["full"], curve["oracle"]], exits):
                point["energy_pj"] = counts.energy_per_image(config.energy_table, used)
        if config.exit_fisher_samples:
            fisher = temporal_fisher(model, fisher_data, config.exit_fisher_samples)
            results["early_exit"]["fisher_centroid"] = fisher.centroid
    return results


def energy_markdown(row):
    result = row["energy"]
    lines = [f"Operations and energy per image of {row['checkpoint']} (T = "
             f"{result['timesteps']}; {result['energy_table_pj']} pJ per operation):", "",
             "| layer | operation | per timestep | equivalent ANN MACs |", "|---|---|---|---|"]
    for layer in result["layers"]:
        lines.append(f"| {layer['name']} | {layer['operation']} | "
                     f"{', '.join(f'{v:.4g}' for v in layer['per_timestep'])} | "
                     f"{layer['ann_macs']} |")
    totals = result["per_image"]
    lines += ["", f"Total: {totals['accumulate']:.4g} accumulates and "
              f"{totals['multiply_accumulate']:.4g} multiply-accumulates, "
              f"{result['energy_pj'] / 1e6:.4g} uJ; the equivalent ANN: {result['ann_macs']} "
              f"MACs, {result['ann_energy_pj'] / 1e6:.4g} uJ."]
    return "\n".join(lines) + "\n"


def exit_markdown(row):
    curve = row["early_exit"]
    lines = [f"Early exit of {row['checkpoint']} ({curve['policy']} policy"
             + (f"; Fisher information centroid {curve['fisher_centroid']:.2f}"
                if "fisher_centroid" in curve else "") + "):", "",
             "| threshold | accuracy (%) | mean timesteps | inputs exiting at t = 1.. |"
             + (" energy per image |" if "energy_pj" in curve["points"][0] else ""),
             "|---|---|---|---|" + ("---|" if "energy_pj" in curve["points"][0] else "")]
    named = [(f"{p['threshold']:g}", p) for p in curve["points"]]
    for name, point in named + [("full T", curve["full"]), ("oracle", curve["oracle"])]:
        energy_cell = (f" {point['energy_pj'] / 1e6:.4g} uJ |" if "energy_pj" in point
                       else "")
        lines.append(f"| {name} | {100 * point['accuracy']:.2f} | "
                     f"{point['mean_timesteps']:.2f} | "
                     f"{', '.join(map(str, point['histogram']))} |{energy_cell}")
    return "\n".join(lines) + "\n"


def timestep_markdown(row):
    result = row["per_timestep"]
    lines = [f"Accuracy (%) per timestep of {row['checkpoint']}:", "",
             "| t | " + " | ".join(str(t) for t in range(1, len(result["accuracy_at"]) + 1))
             + " |", "|---|" + "---|" * len(result["accuracy_at"])]
    for name, key in (("timesteps 1..t", "accuracy_upto"), ("timestep t alone", "accuracy_at")):
        lines.append(f"| {name} | "
                     + " | ".join(f"{100 * value:.2f}" for value in result[key]) + " |")
    return "\n".join(lines) + "\n"


def markdown(rows, evaluations):
    header = "| model | " + " | ".join(evaluations) + " | obfuscation flag |"
    lines = [header, "|" + "---|" * (len(evaluations) + 2)]
    for row in rows:
        cells = []
        for name in evaluations:
            cell = f"{100 * row['accuracy'][name]:.2f}"
            if name != "clean" and "clean" in row["accuracy"]:
                cell += f" ({100 * row['drop_from_clean'][name]:+.2f})"
            cells.append(cell)
        flag = "YES" if row["obfuscation_suspected"] else "no"
        lines.append(f"| {row['checkpoint']} | " + " | ".join(cells) + f" | {flag} |")
    return "\n".join(lines) + "\n"


def evaluate_model(config, path, model, images, labels, fisher_data):
    """The report row of `model`, the checkpoint at `path`."""
    results = {}
    for name in (n for n in config.evaluations if n in PERTURBATIONS):
        results[name] = accuracy(config, name, model, images, labels)
        print(f"{path} {name}: {100 * results[name]:.2f}%", flush=True)
    other_surrogates = {}
    for name in (n for n in config.evaluations if n in ATTACKS):
        for surrogate in config.attack_surrogates:
            value = accuracy(config, name, model, images, labels, surrogate)
            other_surrogates[f"{name}@{surrogates.label(*surrogate)}"] = value
            print(f"{path} {name} via surrogate {surrogates.label(*surrogate)}: "
                  f"{100 * value:.2f}%", flush=True)
    suspected = any(results[key.split("@")[0]] - value > config.obfuscation_drop
                    for key, value in other_surrogates.items())
    return {"checkpoint": path, "timesteps": timesteps_of(model), "accuracy": results,
            "drop_from_clean": {n: results[n] - results["clean"] for n in results}
            if "clean" in results else {},
            "other_surrogates": other_surrogates, "obfuscation_suspected": suspected,
            **time_studies(config, model, images, labels, fisher_data)}


def evaluate(config):
    """Evaluate every checkpoint of `config`; writes the report and returns its rows."""
    paths = [checkpoints.resolve(p) for p in config.checkpoints]
    spec = config.data.spec
    for path in paths:
        model_config = checkpoints.read_model_config(path)
        checkpoints.check_matches_dataset(model_config, spec, path)
        if any(n.endswith("_window") for n in config.evaluations):
            check_window(*config.window, config.timesteps or model_config["timesteps"])
    blurred_to = blur_size((None, *spec.image_shape), config.blur_size)  # refused before work
    if "early_exit" in config.evaluations:
        for threshold in config.exit_thresholds:
            early_exit.check_threshold(config.exit_policy, threshold, spec.num_classes)
    arrays = config.data.load()
    images = to_unit_range(arrays.x_test[:config.eval_samples])
    labels = arrays.y_test[:config.eval_samples]
    fisher_data = (to_unit_range(arrays.x_train[:config.exit_fisher_samples]),
                   arrays.y_train[:config.exit_fisher_samples])
    rows = [evaluate_model(config, path, model, images, labels, fisher_data)
            for path, model in checkpoints.load_models(paths, config.timesteps)]

    settings = {name: value for name, value in dataclasses.asdict(config).items()
                if name in ("evaluations", "eps", "pgd_step", "pgd_iterations", "random_start",
                            "noise", "window", "attack_surrogates", "eval_samples",
                            "timesteps", "seed", "exit_policy", "exit_thresholds",
                            "exit_fisher_samples", "energy_table")}
    settings.update(dataset=config.data.dataset, test_images=len(images), blur_size=blurred_to)
    write_json(os.path.join(config.output_dir, "report.json"),
               {"settings": settings, "models": rows})
    report = write_report(config, rows, len(images))
    print(report)
    return rows


def short_labels(paths):
    """Plot labels: the checkpoint paths without the leading and trailing path components
    they all share (runs/a/checkpoints/epoch-0015, runs/b/... -> a, b)."""
    parts = [os.path.normpath(path).split(os.sep) for path in paths]

    def shared(sequences):
        count = 0
        for column in zip(*sequences):
            if len(set(column)) > 1:
                break
            count += 1
        return count

    lead = shared(parts)
    trail = shared([p[lead:][::-1] for p in parts])
    labels = [os.sep.join(p[lead:len(p) - trail]) for p in parts]
    return labels if len(paths) > 1 and all(labels) else list(paths)


def write_report(config, rows, test_images):
    """report.md and the plots of the time studies; returns the markdown."""
    perturbations = [n for n in config.evaluations if n in PERTURBATIONS]
    sections = [f"Accuracy (%) on {test_images} test images"
                + ("; drop from clean in parentheses.\n\n" + markdown(rows, perturbations)
                   if perturbations else ".\n")]
    labels = short_labels([row["checkpoint"] for row in rows])
    if "per_timestep" in config.evaluations:
        sections += [timestep_markdown(row) for row in rows]
        plots.timestep_accuracy({label: row["per_timestep"] for label, row in zip(labels, rows)},
                                os.path.join(config.output_dir, "per_timestep.png"))
    if "early_exit" in config.evaluations:
        sections += [exit_markdown(row) for row in rows]
        plots.exit_curves({label: row["early_exit"] for label, row in zip(labels, rows)},
                          os.path.join(config.output_dir, "early_exit.png"))
    if "energy" in config.evaluations:
        sections += [energy_markdown(row) for row in rows]
        plots.operations_per_layer({label: row["energy"] for label, row in zip(labels, rows)},
                                   os.path.join(config.output_dir, "energy.png"))
    report = "\n".join(sections)
    write_text(os.path.join(config.output_dir, "report.md"), report)
    return report
