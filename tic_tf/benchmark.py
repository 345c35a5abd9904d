"""Benchmark suite: the command over `tic_tf.benchmarking.benchmark`.

    python -m tic_tf.benchmark --timesteps=4,10 --json=benchmark.json

Prints, for each T, training and inference throughput, the ReLU ceiling, the exact Fisher
curve, PGD-10 and peak memory (see `tic_tf.benchmarking` for what each figure measures).
"""
from tic_tf import cli
from tic_tf.benchmarking import BenchmarkConfig, benchmark


def run():
    cli.run(BenchmarkConfig, benchmark)


if __name__ == "__main__":
    run()
