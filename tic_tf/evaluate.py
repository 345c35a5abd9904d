r"""Robustness evaluation of checkpoints: the command over `tic_tf.robustness.evaluate`.

    python -m tic_tf.evaluate --checkpoints=runs/alpha_low,runs/alpha_high \
        --dataset=cifar10 --data_file=data/cifar10.npz \
        --evaluations=clean,gaussian,blur,fgsm,pgd --output_dir=reports/alpha

Writes report.md and report.json to --output_dir (see `tic_tf.robustness`).
"""
from tic_tf import cli
from tic_tf.robustness import EvaluationConfig, evaluate


def run():
    cli.run(EvaluationConfig, evaluate, required=("checkpoints", "output_dir"))


if __name__ == "__main__":
    run()
