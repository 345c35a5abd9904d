"""What every command-line tool shares: error reporting and the flags common to several tools."""
import sys

from absl import app, flags, logging

from tic_tf.errors import UserError

FLAGS = flags.FLAGS


def run(main, argv=None):
    """`absl.app.run(main)`, turning a UserError into one line on stderr and exit status 2."""

    def guarded(argv):
        if not FLAGS["verbosity"].present:  # TensorFlow's INFO lines drown the tool's output
            logging.set_verbosity(logging.WARNING)
        if len(argv) > 1:
            _fail(f"unexpected arguments {argv[1:]}; pass options as --name=value")
        try:
            return main(argv)
        except UserError as error:
            _fail(str(error))

    app.run(guarded, argv=argv)


def _fail(message):
    logging.flush()
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def define_data_flags():
    """--dataset, --data_dir, --manual_dir, --data_file (defined once per process)."""
    if "dataset" in FLAGS:
        return
    from tic_tf.data import DATASETS

    flags.DEFINE_enum("dataset", "digits", sorted(DATASETS), "Dataset; it also sets the "
                      "normalisation statistics, number of classes and augmentation. digits "
                      "ships with scikit-learn; the others come from TFDS or --data_file.")
    flags.DEFINE_string("data_dir", None, "TFDS data directory (default: TFDS's own).")
    flags.DEFINE_string("manual_dir", None, "Folder holding the dataset's original archives, "
                        "for preparing TFDS offline (TFDS manual_dir).")
    flags.DEFINE_string("data_file", None, "An .npz with x_train, y_train, x_test, y_test "
                        "(uint8 images [N,H,W,C], integer labels) used instead of TFDS.")
