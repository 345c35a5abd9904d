"""Temporal information analysis of checkpoints: the command over `tic_tf.analysis.analyze`.

    python -m tic_tf.analyze --checkpoints=runs/quick_cpu --output_dir=analysis/quick_cpu

--checkpoints takes checkpoint directories (epoch-NNNN) and run directories (all their
checkpoints); --analyses=fisher,windows,diagnostics chooses what is measured. The JSON files
and plots it writes into --output_dir are listed in `tic_tf.analysis`.
"""
from tic_tf import cli
from tic_tf.analysis import AnalysisConfig, analyze


def run():
    cli.run(AnalysisConfig, analyze, required=("checkpoints", "output_dir"))


if __name__ == "__main__":
    run()
