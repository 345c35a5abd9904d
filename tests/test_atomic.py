"""Atomic publication of directories survives a kill between its two renames."""
import os

import pytest

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
