"""Export a checkpoint as a SavedModel for serving: images in, class probabilities out.

    python -m tic_tf.export --checkpoint=runs/cifar10/checkpoints/epoch-0300 \
        --output=exported/resnet19_t4 --timesteps=4
"""
from absl import flags

from tic_tf import checkpoints, cli
from tic_tf.serving import export_saved_model

flags.DEFINE_string("checkpoint", None, "Checkpoint directory (epoch-NNNN) or run directory "
                    "(its newest checkpoint is used).")
flags.DEFINE_string("output", None, "Where to write the SavedModel directory.")
flags.DEFINE_integer("timesteps", None, "Inference timesteps baked into the export; default: "
                     "the timesteps the model was trained with.", lower_bound=1)
flags.mark_flags_as_required(["checkpoint", "output"])
FLAGS = flags.FLAGS


def main(argv):
    model, config = checkpoints.load_model(FLAGS.checkpoint, timesteps=FLAGS.timesteps)
    export_saved_model(model, FLAGS.output)
    print(f"Exported {config['arch']} at T={config['timesteps']} to {FLAGS.output}")


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
