"""The paper's experiments, one command each (see tic_tf.experiments):

    python scripts/reproduce.py fig1 --scale=smoke --output_dir=reproduce

EXPERIMENT is fig1, fig2, fig3, fig4, fig5, table1 or fig7; --scale is smoke (about a minute,
every code path), cpu (hours on 2 CPU cores, the converged regime on Fashion-MNIST beside the
checkout) or paper (the paper's settings, for a GPU). Rerunning skips finished runs and resumes
interrupted ones. Data sets that TFDS cannot download here come from --data_dir (prepared
TFDS data), --manual_dir (original archives) or --data_files=NAME=PATH.npz,...
"""
import sys

from absl import app, flags

from tic_tf import cli  # noqa: F401  (first: the commands' environment, before TensorFlow)
from tic_tf.errors import UserError
from tic_tf.experiments import EXPERIMENTS, SCALES, DataSources, run_experiment

flags.DEFINE_enum("scale", "smoke", list(SCALES), "Sizes of the runs (see tic_tf.experiments).")
flags.DEFINE_string("output_dir", "reproduce", "Where <scale>/runs/, the JSON and PNG go.")
flags.DEFINE_string("data_dir", None, "TFDS data directory holding prepared data sets.")
flags.DEFINE_string("manual_dir", None, "Folder of original archives for TFDS (SVHN: also "
                    "train_32x32.mat and test_32x32.mat, read without TFDS).")
flags.DEFINE_list("data_files", [], "NAME=PATH.npz pairs: data sets from .npz files with "
                  "x_train, y_train, x_test, y_test, e.g. svhn=/data/svhn.npz.")
FLAGS = flags.FLAGS


def data_sources():
    files = {}
    for pair in FLAGS.data_files:
        name, _, path = pair.partition("=")
        if not name or not path:
            raise UserError(f"--data_files takes NAME=PATH.npz pairs, got {pair!r}.")
        files[name] = path
    return DataSources(FLAGS.data_dir, FLAGS.manual_dir, files)


def main(argv):
    if len(argv) != 2 or argv[1] not in EXPERIMENTS:
        print(f"usage: reproduce.py EXPERIMENT [--scale=...] [--output_dir=...], EXPERIMENT "
              f"one of {', '.join(EXPERIMENTS)}", file=sys.stderr)
        sys.exit(2)
    try:
        run_experiment(argv[1], FLAGS.scale, FLAGS.output_dir, data_sources())
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
