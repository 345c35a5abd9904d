"""Train a spiking network with BPTT: the command over `tic_tf.training.train`.

    python -m tic_tf.train --dataset=svhn --timesteps=10
    python -m tic_tf.train --flagfile=flags/quick_cpu.cfg

Everything lands in --model_dir: flags.json, checkpoints/epoch-NNNN, metrics.jsonl,
tensorboard/, results.json and saved_model/. Running the same command again resumes from the
last complete checkpoint.
"""
from tic_tf import cli
from tic_tf.training import TrainConfig, train


def run():
    cli.run(TrainConfig, train)


if __name__ == "__main__":
    run()
