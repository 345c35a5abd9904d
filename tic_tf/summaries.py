"""Callbacks that write TensorBoard summaries: a file writer opened on first use and closed
when the `fit` ends (`release`), however it ends, so that a library call leaves no writer
open behind it."""
import keras
import tensorflow as tf


class SummaryCallback(keras.callbacks.Callback):
    """A callback whose `writer` writes summaries into `log_dir`."""

    def __init__(self, log_dir):
        super().__init__()
        self.log_dir = log_dir
        self._writer = None

    @property
    def writer(self):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        return self._writer

    def on_train_end(self, logs=None):
        self.release()

    def release(self):
        """Close the writer (a later fit opens a new one); also called by
        `tic_tf.distribute.fit` when training stops with an error."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def release_all(callbacks):
    """`release()` every callback that holds a resource beyond its fit (a file writer, a
    signal handler)."""
    for callback in callbacks:
        release = getattr(callback, "release", None)
        if release is not None:
            release()
