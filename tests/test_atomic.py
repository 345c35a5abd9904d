"""Atomic publication of directories survives a kill between its two renames; writes that
find the disk full leave the files as they were."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

from tic_tf import atomic, checkpoints


def written(path, text):
    os.makedirs(path)
    with open(os.path.join(path, "content"), "w") as handle:
        handle.write(text)
    return path


def content(path):
    with open(os.path.join(path, "content")) as handle:
        return handle.read()


def test_a_kill_between_the_renames_loses_neither_version(tmp_path, monkeypatch):
    final = str(tmp_path / "epoch-0003")
    written(final, "old")
    real_replace, calls = os.replace, []

    def killed_on_second_rename(source, target):
        calls.append(target)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies here
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", killed_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        atomic.publish_dir(written(str(tmp_path / "new.partial-1"), "new"), final)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not os.path.exists(final)  # the moment of the kill: only the retired copy is left
    assert [path for _, path in checkpoints.list_epochs(str(tmp_path))] == [final]
    assert content(final) == "old"
    atomic.publish_dir(written(str(tmp_path / "new.partial-2"), "new"), final)
    assert content(final) == "new"
    assert sorted(os.listdir(tmp_path)) == ["epoch-0003", "new.partial-1"]
    atomic.remove_partials(str(tmp_path))
    assert os.listdir(tmp_path) == ["epoch-0003"]


# Writes under a 1,000-byte file-size limit (EFBIG, as a full disk gives ENOSPC), in a child
# process so that the limit stays there; prints the files' contents and the error.
LIMITED_WRITES = """
import json, os, resource, signal, sys
from tic_tf import atomic
from tic_tf.errors import UserError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
directory = sys.argv[1]
metrics, results = os.path.join(directory, "metrics.jsonl"), os.path.join(directory, "r.json")
atomic.append_line(metrics, "x" * 600)
atomic.write_text(results, "small")
errors = []
for write in (lambda: atomic.append_line(metrics, "y" * 600),
              lambda: atomic.write_text(results, "z" * 1500)):
    try:
        write()
    except UserError as error:
        errors.append(str(error))
print(json.dumps({"errors": errors, "files": sorted(os.listdir(directory)),
                  "metrics": open(metrics).read(), "results": open(results).read()}))
"""


def test_writes_that_find_no_space_leave_the_files_as_they_were(tmp_path):
    result = subprocess.run([sys.executable, "-c", LIMITED_WRITES, str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["metrics"] == "x" * 600 + "\n"  # the failed line cut back off, not half there
    assert outcome["results"] == "small"
    assert outcome["files"] == ["metrics.jsonl", "r.json"]  # no partial file left behind
    metrics, results = tmp_path / "metrics.jsonl", tmp_path / "r.json"
    assert outcome["errors"][0].startswith(f"Could not write {metrics}: File too large (it "
                                           "needs about 601 bytes; ")
    assert outcome["errors"][1].startswith(f"Could not write {results}: File too large (it "
                                           "needs about 1.5 kB; ")
