"""Preemption: on SIGTERM, save a mid-epoch checkpoint after the current step and exit.

The checkpoint `checkpoints/preempted` holds the model, the optimizer and the position
(epoch, step). Since the data order is a stateless function of (seed, epoch, example),
resuming finishes that epoch from the next step and reaches the same weights as a run that
was never stopped. It is deleted once the epoch's own checkpoint exists.
"""
import os
import shutil
import signal
import sys

import keras
import tensorflow as tf

from tic_tf import checkpoints
from tic_tf.errors import UserError

NAME = "preempted"


def _position():
    return {"epoch": tf.Variable(0, dtype=tf.int64), "step": tf.Variable(0, dtype=tf.int64)}


def restore(checkpoint_dir, model):
    """Restore a preemption checkpoint newer than the newest epoch checkpoint, if any, and
    return (epoch, step) to resume at (0-based epoch, steps done in it); else None, with the
    model untouched or to be restored from an epoch checkpoint by the caller."""
    path = os.path.join(checkpoint_dir, NAME)
    if not os.path.isdir(path):
        return None
    found = checkpoints.list_epochs(checkpoint_dir)
    position = _position()
    try:
        tf.train.Checkpoint(**position).read(os.path.join(path, checkpoints.STATE)).expect_partial()
        epoch = int(position["epoch"].numpy())
        if found and epoch < found[-1][0]:  # superseded by an epoch checkpoint
            shutil.rmtree(path)
            return None
        checkpoints.restore(path, model, model.optimizer, extra=position)
    except checkpoints.UNREADABLE as error:  # UserError, from restore, is a ValueError
        print(f"warning: skipping unreadable checkpoint {path}: {error}", file=sys.stderr)
        return None
    step = int(position["step"].numpy())
    print(f"Resuming from {path} (epoch {epoch + 1}, after step {step}).")
    return epoch, step


class PreemptionCheckpoint(keras.callbacks.Callback):
    """Turns SIGTERM into: finish the step, write `checkpoints/preempted`, exit with a message.

    `first_step` is the step the first epoch of this `fit` starts at (after a resume).
    """

    def __init__(self, checkpoint_dir, model_config, first_step=0):
        super().__init__()
        self.path = os.path.join(checkpoint_dir, NAME)
        self.model_config = model_config
        self.offset = first_step
        self.requested = False
        self.previous_handler = None

    def on_train_begin(self, logs=None):
        self.previous_handler = signal.signal(signal.SIGTERM, self._request)

    def on_train_end(self, logs=None):
        self.release()

    def release(self):
        """Give SIGTERM back to the handler it had before training (also called by
        `tic_tf.distribute.fit` when training stops with an error)."""
        if self.previous_handler is not None:
            signal.signal(signal.SIGTERM, self.previous_handler)
            self.previous_handler = None

    def _request(self, signum, frame):
        self.requested = True

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if not self.requested:
            return
        step = self.offset + batch + 1
        position = _position()
        position["epoch"].assign(self.epoch)
        position["step"].assign(step)
        checkpoints.write(self.path, self.model, self.model_config, self.model.optimizer,
                          extra=position)
        raise UserError(f"Preempted (SIGTERM) at epoch {self.epoch + 1}, step {step}; saved "
                        f"{self.path}. Run the same command again to resume.")

    def on_epoch_end(self, epoch, logs=None):
        self.offset = 0
        shutil.rmtree(self.path, ignore_errors=True)  # the epoch checkpoint now covers it
