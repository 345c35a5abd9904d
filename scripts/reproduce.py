"""The paper's experiments, one command each (see tic_tf.experiments):

    python scripts/reproduce.py fig1 --scale=smoke --output_dir=reproduce

EXPERIMENT is fig1, fig2, fig3 or fig4; --scale is smoke (about a minute, every code path),
cpu (hours on 2 CPU cores, the converged regime on Fashion-MNIST beside the checkout) or paper
(the paper's settings, for a GPU). Rerunning skips finished runs and resumes interrupted ones.
"""
import sys

from absl import app, flags

from tic_tf.errors import UserError
from tic_tf.experiments import EXPERIMENTS, SCALES, run_experiment

flags.DEFINE_enum("scale", "smoke", list(SCALES), "Sizes of the runs (see tic_tf.experiments).")
flags.DEFINE_string("output_dir", "reproduce", "Where <scale>/runs/, the JSON and PNG go.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) != 2 or argv[1] not in EXPERIMENTS:
        print(f"usage: reproduce.py EXPERIMENT [--scale=...] [--output_dir=...], EXPERIMENT "
              f"one of {', '.join(EXPERIMENTS)}", file=sys.stderr)
        sys.exit(2)
    try:
        run_experiment(argv[1], FLAGS.scale, FLAGS.output_dir)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
