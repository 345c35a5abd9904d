"""Time-window deficits (the paper's Fig. 2): accuracy with input noise only during a window of
timesteps, which shows how much each stretch of time matters to the prediction."""
import numpy as np
import tensorflow as tf

from tic_tf.compiled import function
from tic_tf.corruptions import check_window, gaussian_noise, windowed_frames
from tic_tf.losses import mean_logits
from tic_tf.models import run_on_frames, timesteps_of


def window_accuracies(model, images, labels, window, noise, seed, batch_size):
    """Accuracy with noise during [t, t+window-1] for every t; relative to the last window."""
    timesteps = timesteps_of(model)
    check_window(1, window, timesteps)
    starts = list(range(1, timesteps - window + 2))
    predict = function(lambda frames: tf.argmax(mean_logits(run_on_frames(model, frames)),
                                                axis=-1, output_type=tf.int32))
    correct = np.zeros(len(starts))
    for index, begin in enumerate(range(0, len(images), batch_size)):
        clean = tf.constant(images[begin:begin + batch_size])
        noisy = gaussian_noise(clean, noise, seed=(seed, index))
        for slot, start in enumerate(starts):
            frames = windowed_frames(clean, noisy, timesteps, start, window)
            correct[slot] += int(tf.reduce_sum(tf.cast(
                predict(frames) == labels[begin:begin + batch_size], tf.int32)))
    accuracy = correct / len(images)
    # Undefined (None) when the last window leaves no image correctly classified.
    relative = (accuracy / accuracy[-1]).tolist() if accuracy[-1] > 0 else None
    return {"window": window, "noise": noise, "starts": starts,
            "accuracy": accuracy.tolist(), "relative_to_last": relative}
