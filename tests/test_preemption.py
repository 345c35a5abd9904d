"""Resuming from a mid-epoch (preemption) checkpoint: what counts as unreadable."""
import os
import types

import pytest
import tensorflow as tf

from tic_tf import checkpoints, preemption
from tic_tf.errors import UserError


def preempted_at(run_dir, epoch, step):
    """A preemption checkpoint's position record, as the callback writes it."""
    position = preemption._position()
    position["epoch"].assign(epoch)
    position["step"].assign(step)
    path = os.path.join(run_dir, preemption.NAME)
    tf.train.Checkpoint(**position).write(os.path.join(path, checkpoints.STATE))
    return path


def test_an_unreadable_preemption_checkpoint_is_skipped_but_a_bug_is_not(tmp_path, monkeypatch,
                                                                          capsys):
    path = preempted_at(str(tmp_path), epoch=2, step=5)
    model = types.SimpleNamespace(optimizer=None)

    def damaged(*args, **kwargs):
        raise UserError("Cannot restore checkpoint: shapes differ")

    monkeypatch.setattr(checkpoints, "restore", damaged)
    assert preemption.restore(str(tmp_path), model) is None
    assert f"skipping unreadable checkpoint {path}" in capsys.readouterr().err

    def bug(*args, **kwargs):
        raise TypeError("a bug, not a damaged file")

    monkeypatch.setattr(checkpoints, "restore", bug)
    with pytest.raises(TypeError, match="a bug"):
        preemption.restore(str(tmp_path), model)

    monkeypatch.setattr(checkpoints, "restore", lambda *args, **kwargs: None)
    assert preemption.restore(str(tmp_path), model) == (2, 5)
