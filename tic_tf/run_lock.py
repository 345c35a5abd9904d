"""One writer per run directory.

Two processes writing one run directory (a scheduler's retry beside the first attempt, or a
second command started by hand) would interleave checkpoints and delete each other's partial
files. The writer holds `<directory>/.lock`, a JSON file naming its process and host, created
exclusively and removed when it finishes. A lock whose process is gone (killed, or its machine
restarted) is stale and taken over; a lock held on another host cannot be checked from here
and is refused with the command that clears it.
"""
import contextlib
import json
import os
import socket
import sys
import time

from tic_tf.errors import UserError

LOCK_NAME = ".lock"


@contextlib.contextmanager
def holding(directory):
    """Hold `directory`'s lock while the body runs (the directory is created if needed);
    UserError naming the holder if a live process holds it."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LOCK_NAME)
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
    unreadable = 0
    while not _create(path, me):
        holder = _read(path)
        if holder is None and unreadable < 20:  # released or being written just now
            unreadable += 1
            time.sleep(0.05)
            continue
        if holder is not None:
            _refuse_unless_stale(directory, path, holder)
        print(f"Taking over the lock of {directory}: " + (
            f"{_describe(holder)} is no longer running." if holder else
            "it was left incomplete by a process that died taking it."))
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    try:
        yield
    finally:
        if _read(path) == me:
            os.remove(path)


def _create(path, content):
    """Write `content` to `path` if nothing is there; False if something is."""
    try:
        handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(handle, "w") as stream:
        json.dump(content, stream)
    return True


def _read(path):
    """The holder recorded in `path`, or None if it is gone or incomplete."""
    try:
        with open(path) as stream:
            holder = json.load(stream)
    except (FileNotFoundError, ValueError):
        return None
    return holder if isinstance(holder, dict) and {"pid", "host"} <= set(holder) else None


def _describe(holder):
    return (f"process {holder['pid']} on {holder['host']} (started "
            f"{holder.get('started', '?')}: {holder.get('command', '?')})")


def _refuse_unless_stale(directory, path, holder):
    on_this_host = holder["host"] == socket.gethostname()
    if not on_this_host or _running(holder["pid"]):
        raise UserError(f"{directory} is being written by {_describe(holder)}. Wait for it to "
                        "finish or choose another directory; if that process is no longer "
                        f"running, delete {path}.")


def _running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
