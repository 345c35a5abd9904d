r"""Export a checkpoint for serving: images in, class probabilities out.

    python -m tic_tf.export --checkpoint=runs/cifar10/checkpoints/epoch-0300 \
        --output_dir=exported/resnet19_t4 --timesteps=4
    python -m tic_tf.export --checkpoint=runs/quick_cpu --output_dir=exported/lite \
        --format=tflite --int8_weights

(--output is the old name of --output_dir and still works.)
"""
from tic_tf import cli
from tic_tf.serving import ExportConfig, export_checkpoint


def run():
    cli.run(ExportConfig, export_checkpoint, required=("checkpoint", "output_dir"),
            aliases={"output": "output_dir"})


if __name__ == "__main__":
    run()
