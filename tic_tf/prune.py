r"""TIC-aware iterative magnitude pruning: the command over `tic_tf.iterative_pruning.prune`.

    python -m tic_tf.prune --checkpoint=runs/t5 --dataset=cifar10 \
        --data_file=data/cifar10.npz --output_dir=runs/t5_prune \
        --rounds=5 --fraction=0.5 --retrain_epochs=2 --retrain_timesteps=5,3,2,auto

Writes T<r>/round-NN/ checkpoints, results.json, results.md and accuracy_vs_sparsity.png to
--output_dir; running the same command again resumes after the last complete round.
"""
from tic_tf import cli
from tic_tf.iterative_pruning import PruneConfig, prune


def run():
    cli.run(PruneConfig, prune, required=("checkpoint", "output_dir"))


if __name__ == "__main__":
    run()
