"""One writer per run directory: a live holder refuses a second writer, a dead one's lock is
taken over, and the lock goes when its holder finishes."""
import contextlib
import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import REPO, assert_fails_cleanly, run_tool, train_args
from tic_tf import run_lock
from tic_tf.errors import UserError
from tic_tf.experiments import run_experiment

HOLD = """import sys
from tic_tf import run_lock
with run_lock.holding(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


@contextlib.contextmanager
def held_elsewhere(directory):
    """Another process holds `directory`'s lock while the body runs; yields its pid."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], cwd=REPO, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder.pid
    finally:
        holder.communicate(timeout=60)
    assert holder.returncode == 0
    assert not (directory / run_lock.LOCK_NAME).exists()  # released on exit


@pytest.fixture
def live_holder(tmp_path):
    """(run directory, pid) of another process holding the run directory's lock."""
    with held_elsewhere(tmp_path / "run") as pid:
        yield tmp_path / "run", pid


def write_lock(run_dir, **holder):
    run_dir.mkdir(exist_ok=True)
    (run_dir / run_lock.LOCK_NAME).write_text(json.dumps(holder))


def finished_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_live_holder_refuses_a_second_writer_by_name(live_holder):
    run_dir, pid = live_holder
    with pytest.raises(UserError, match=rf"^{run_dir} is being written by process {pid} on "
                       rf"{socket.gethostname()} \(started [-0-9: ]+: -c {run_dir}\)\. Wait for it to "
                       rf"finish .* delete {run_dir}/\.lock\.$"):
        with run_lock.holding(str(run_dir)):
            pass


def test_train_on_a_directory_another_process_writes_stops_with_one_line(live_holder,
                                                                          tiny_npz):
    run_dir, pid = live_holder
    result = run_tool("train", *train_args(tiny_npz, run_dir, "--fisher_every=0"))
    assert_fails_cleanly(result, f"error: {run_dir} is being written by process {pid}")
    assert sorted(os.listdir(run_dir)) == [run_lock.LOCK_NAME]  # nothing written beside it


def test_the_lock_of_a_process_that_is_gone_is_taken_over(tmp_path, capsys):
    run_dir = tmp_path / "run"
    pid = finished_pid()
    write_lock(run_dir, pid=pid, host=socket.gethostname(), started="then", command="train")
    with run_lock.holding(str(run_dir)):
        held = json.loads((run_dir / run_lock.LOCK_NAME).read_text())
        assert (held["pid"], held["host"]) == (os.getpid(), socket.gethostname())
    assert capsys.readouterr().out == (f"Taking over the lock of {run_dir}: process {pid} on "
                                       f"{socket.gethostname()} (started then: train) is no "
                                       "longer running.\n")
    assert not (run_dir / run_lock.LOCK_NAME).exists()


def test_an_incomplete_lock_is_taken_over(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / run_lock.LOCK_NAME).write_text("")  # its writer died between create and write
    with run_lock.holding(str(run_dir)):
        pass
    assert "left incomplete by a process that died taking it" in capsys.readouterr().out


def test_a_lock_held_on_another_host_is_refused_with_how_to_clear_it(tmp_path):
    run_dir = tmp_path / "run"
    write_lock(run_dir, pid=finished_pid(), host="elsewhere", started="then", command="train")
    with pytest.raises(UserError, match=f"if that process is no longer running, delete "
                       f"{run_dir}/.lock"):
        with run_lock.holding(str(run_dir)):
            pass


def test_the_lock_is_released_when_the_writer_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with run_lock.holding(str(tmp_path / "run")):
            raise RuntimeError("a failed run")
    assert os.listdir(tmp_path / "run") == []
    with run_lock.holding(str(tmp_path / "run")):  # and a rerun takes it without a word
        pass


def test_a_second_reproduction_driver_on_the_same_directory_is_refused(tmp_path):
    with held_elsewhere(tmp_path / "smoke") as pid:
        with pytest.raises(UserError, match=f"^{tmp_path}/smoke is being written by process "
                           f"{pid}"):
            run_experiment("fig1", "smoke", str(tmp_path))
        assert os.listdir(tmp_path / "smoke") == [run_lock.LOCK_NAME]  # nothing trained
