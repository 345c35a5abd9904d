"""Robustness evaluation of checkpoints: a Table-1-style report (PAPER.md section 4).

    python -m tic_tf.evaluate --checkpoints=runs/alpha_low,runs/alpha_high \
        --dataset=cifar10 --data_file=../shared/data/cifar10_subset.npz \
        --evaluations=clean,gaussian,blur,fgsm,pgd --output_dir=reports/alpha

Writes report.md and report.json to --output_dir: accuracy per model and evaluation, and the
drop from clean accuracy. Defaults are the paper's: Gaussian noise at 50% of the image's l2
norm, blur through 16x16, FGSM eps 8/255, PGD eps 8/255, step 4/255, 10 iterations.
fgsm_window / pgd_window perturb only timesteps --window=start,width. --attack_surrogates
re-runs the attacks through other surrogate sharpnesses and flags gradient obfuscation.
"""
import math
import os

import numpy as np
import tensorflow as tf
from absl import flags

from tic_tf import checkpoints, cli
from tic_tf.attacks import attacked_logits, fgsm, pgd
from tic_tf.atomic import write_json, write_text
from tic_tf.compiled import cached
from tic_tf.corruptions import blur, blur_size, check_window, gaussian_noise
from tic_tf.data import get_spec, load_arrays, to_unit_range
from tic_tf.errors import UserError
from tic_tf.losses import mean_logits
from tic_tf.models import timesteps_of
from tic_tf.neurons import DEFAULT_SHARPNESS

EVALUATIONS = ("clean", "gaussian", "blur", "fgsm", "pgd", "fgsm_window", "pgd_window")
ATTACKS = ("fgsm", "pgd", "fgsm_window", "pgd_window")

cli.define_data_flags()
flags.DEFINE_list("checkpoints", None, "Checkpoint or run directories (a run's newest "
                  "checkpoint), one model each.")
flags.DEFINE_string("output_dir", None, "Where report.md and report.json go.")
flags.DEFINE_list("evaluations", ["clean", "gaussian", "blur", "fgsm", "pgd"],
                  f"Any of {', '.join(EVALUATIONS)}.")
flags.DEFINE_float("eps", 8 / 255, "l-infinity radius of FGSM and PGD, in [0, 1] pixels.")
flags.DEFINE_float("pgd_step", 4 / 255, "PGD step size.")
flags.DEFINE_integer("pgd_iterations", 10, "PGD iterations.")
flags.DEFINE_boolean("random_start", False, "Start PGD at a random point of the eps-ball.")
flags.DEFINE_float("noise", 0.5, "Gaussian noise l2 norm as a fraction of the image's.")
flags.DEFINE_integer("blur_size", None, "Blur: bilinear downsampling to this size and back "
                     "(default: half the image side, 16 for 32x32 images as in the paper).")
flags.DEFINE_list("window", ["1", "2"], "start,width of the timesteps the *_window attacks "
                  "perturb (1-based).")
flags.DEFINE_list("attack_surrogates", [], "Extra surrogate sharpnesses (the model trained "
                  f"with pi = {math.pi:.4f}) for the attacks, e.g. 1.57,6.28.")
flags.DEFINE_float("obfuscation_drop", 0.05, "Flag a model whose attacked accuracy falls by "
                   "more than this (absolute) under another surrogate.")
flags.DEFINE_integer("eval_samples", None, "Test images to use (default all).", lower_bound=1)
flags.DEFINE_integer("batch_size", 64, "Batch size.", lower_bound=1)
flags.DEFINE_integer("timesteps", None, "Run the models at this T (default: trained T).",
                     lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed for noise and random starts.")
flags.DEFINE_boolean("xla", True, "Compile with XLA.")
flags.mark_flags_as_required(["checkpoints", "output_dir"])
FLAGS = flags.FLAGS


def _validate_flags():
    unknown = set(FLAGS.evaluations) - set(EVALUATIONS)
    if unknown:
        raise UserError(f"Unknown evaluation(s) {sorted(unknown)}; choose from "
                        f"{', '.join(EVALUATIONS)}.")
    if FLAGS.eps < 0 or FLAGS.pgd_step < 0:
        raise UserError("--eps and --pgd_step must be >= 0.")
    if FLAGS.pgd_iterations < 1:
        raise UserError("--pgd_iterations must be >= 1.")
    try:
        window = tuple(int(v) for v in FLAGS.window)
        surrogates = [float(v) for v in FLAGS.attack_surrogates]
    except ValueError as error:
        raise UserError(f"--window takes start,width and --attack_surrogates numbers "
                        f"({error}).") from error
    if len(window) != 2:
        raise UserError("--window takes two numbers: start,width.")
    if any(s <= 0 for s in surrogates):
        raise UserError("--attack_surrogates must be positive.")
    return window, surrogates


def predictions(model, window):
    """Compiled: predicted classes of (possibly time-windowed) adversarial inputs."""
    return cached(model, ("predict", window, FLAGS.xla), lambda: tf.function(
        lambda adversarial, clean: tf.argmax(mean_logits(
            attacked_logits(model, adversarial, clean, window)), -1, output_type=tf.int32),
        jit_compile=FLAGS.xla))


def perturb(name, model, images, labels, index, window, surrogate):
    """The perturbed batch for one evaluation, and the window it applies to."""
    if name == "clean":
        return images, None
    if name == "gaussian":
        return gaussian_noise(images, FLAGS.noise, seed=(FLAGS.seed, index)), None
    if name == "blur":
        return blur(images, FLAGS.blur_size), None
    attack_window = window if name.endswith("_window") else None
    common = dict(window=attack_window, surrogate=surrogate, jit_compile=FLAGS.xla)
    if name.startswith("fgsm"):
        return fgsm(model, images, labels, FLAGS.eps, **common), attack_window
    return pgd(model, images, labels, FLAGS.eps, FLAGS.pgd_step, FLAGS.pgd_iterations,
               FLAGS.random_start, seed=FLAGS.seed, **common), attack_window


def accuracy(name, model, images, labels, window, surrogate=DEFAULT_SHARPNESS):
    correct = 0
    for index, start in enumerate(range(0, len(images), FLAGS.batch_size)):
        clean = tf.constant(images[start:start + FLAGS.batch_size])
        batch_labels = labels[start:start + FLAGS.batch_size]
        perturbed, used_window = perturb(name, model, clean, batch_labels, index, window,
                                         surrogate)
        predicted = predictions(model, used_window)(perturbed, clean)
        correct += int(np.sum(predicted.numpy() == batch_labels))
    return correct / len(images)


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


def main(argv):
    window, surrogates = _validate_flags()
    paths = [checkpoints.resolve(p) for p in FLAGS.checkpoints]
    spec = get_spec(FLAGS.dataset)
    configs = [checkpoints.read_model_config(p) for p in paths]
    for path, config in zip(paths, configs):
        checkpoints.check_matches_dataset(config, spec, path)
        if any(n.endswith("_window") for n in FLAGS.evaluations):
            check_window(*window, FLAGS.timesteps or config["timesteps"])
    blurred_to = blur_size((None, *spec.image_shape), FLAGS.blur_size)  # refused before work
    arrays = load_arrays(spec, FLAGS.data_dir, FLAGS.manual_dir, FLAGS.data_file)
    images = to_unit_range(arrays.x_test[:FLAGS.eval_samples])
    labels = arrays.y_test[:FLAGS.eval_samples]

    rows = []
    for path in paths:
        model, _ = checkpoints.load_model(path, timesteps=FLAGS.timesteps)
        results = {}
        for name in FLAGS.evaluations:
            results[name] = accuracy(name, model, images, labels, window)
            print(f"{path} {name}: {100 * results[name]:.2f}%", flush=True)
        other_surrogates = {}
        for name in (n for n in FLAGS.evaluations if n in ATTACKS):
            for sharpness in surrogates:
                value = accuracy(name, model, images, labels, window, sharpness)
                other_surrogates[f"{name}@{sharpness:g}"] = value
                print(f"{path} {name} via surrogate {sharpness:g}: {100 * value:.2f}%",
                      flush=True)
        suspected = any(results[key.split("@")[0]] - value > FLAGS.obfuscation_drop
                        for key, value in other_surrogates.items())
        rows.append({"checkpoint": path, "timesteps": timesteps_of(model),
                     "accuracy": results,
                     "drop_from_clean": {n: results[n] - results["clean"] for n in results}
                     if "clean" in results else {},
                     "other_surrogates": other_surrogates,
                     "obfuscation_suspected": suspected})

    settings = {name: FLAGS[name].value for name in (
        "dataset", "evaluations", "eps", "pgd_step", "pgd_iterations", "random_start", "noise",
        "blur_size", "window", "attack_surrogates", "eval_samples", "timesteps", "seed")}
    settings["test_images"] = len(images)
    settings["blur_size"] = blurred_to
    write_json(os.path.join(FLAGS.output_dir, "report.json"),
               {"settings": settings, "models": rows})
    write_text(os.path.join(FLAGS.output_dir, "report.md"),
               f"Accuracy (%) on {len(images)} test images; drop from clean in parentheses.\n\n"
               + markdown(rows, FLAGS.evaluations))
    print(markdown(rows, FLAGS.evaluations))


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
