"""Paths a command would write but cannot are refused before any work, naming the flag."""
import os

import pytest

from conftest import assert_fails_cleanly, run_tool
from tic_tf.analysis import AnalysisConfig
from tic_tf.benchmarking import BenchmarkConfig
from tic_tf.errors import UserError
from tic_tf.experiments import run_experiment
from tic_tf.iterative_pruning import PruneConfig
from tic_tf.robustness import EvaluationConfig
from tic_tf.serving import ExportConfig
from tic_tf.training import TrainConfig

# Each entry point's configuration with its written path set to `path`.
WRITERS = {
    "train --model_dir": lambda path: TrainConfig(model_dir=path),
    "analyze --output_dir": lambda path: AnalysisConfig(checkpoints=("run",), output_dir=path),
    "evaluate --output_dir": lambda path: EvaluationConfig(checkpoints=("run",),
                                                           output_dir=path),
    "prune --output_dir": lambda path: PruneConfig(checkpoint="run", output_dir=path),
    "export --output_dir": lambda path: ExportConfig(checkpoint="run", output_dir=path),
    "reproduce --output_dir": lambda path: run_experiment("fig1", "smoke", path),
}


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a directory")
    return str(path)


@pytest.mark.parametrize("writer", WRITERS)
def test_a_file_where_a_directory_goes_is_refused(writer, a_file):
    flag = writer.split()[1]
    with pytest.raises(UserError, match=f"^{flag}={a_file} is a file, not a directory; "):
        WRITERS[writer](a_file)


@pytest.mark.parametrize("writer", WRITERS)
def test_a_directory_under_a_file_is_refused(writer, a_file):
    path = os.path.join(a_file, "run", "deeper")
    with pytest.raises(UserError, match=f"cannot be created: {a_file} is a file; "):
        WRITERS[writer](path)


def test_a_directory_where_the_benchmark_json_goes_is_refused(tmp_path, a_file):
    with pytest.raises(UserError, match=f"^--json={tmp_path} is a directory, not a file; "):
        BenchmarkConfig(json=str(tmp_path))
    with pytest.raises(UserError, match=f"cannot be created: {a_file} is a file; "):
        BenchmarkConfig(json=os.path.join(a_file, "figures.json"))


def test_a_directory_without_write_permission_is_refused(tmp_path):
    # /proc/sys refuses new entries even to root, whom permission bits do not stop.
    target = "/proc/sys" if os.geteuid() == 0 else str(tmp_path / "locked")
    if target != "/proc/sys":
        os.mkdir(target, 0o500)
    with pytest.raises(UserError, match=f"no permission to write in {target}; "):
        TrainConfig(model_dir=os.path.join(target, "run"))


def test_train_into_a_file_fails_with_one_line_and_writes_nothing(a_file):
    before = sorted(os.listdir(os.path.dirname(a_file)))
    result = run_tool("train", f"--model_dir={a_file}", "--epochs=1")
    assert_fails_cleanly(result, f"--model_dir={a_file} is a file, not a directory")
    assert [l for l in result.stderr.splitlines() if l.startswith("error:")] == [
        f"error: --model_dir={a_file} is a file, not a directory; pass a path for a directory."]
    assert sorted(os.listdir(os.path.dirname(a_file))) == before
    assert open(a_file).read() == "not a directory"
