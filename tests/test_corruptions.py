import numpy as np
import pytest
import tensorflow as tf

from tic_tf.corruptions import blur, gaussian_noise, windowed_frames
from tic_tf.errors import UserError
from tic_tf.models import build_model, run_on_frames

IMAGES = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)


@pytest.mark.parametrize("fraction", [0.5, 0.1])
def test_gaussian_noise_has_the_requested_relative_l2_norm(fraction):
    noisy = gaussian_noise(IMAGES, fraction, seed=(1, 2)).numpy()
    ratio = (np.linalg.norm((noisy - IMAGES).reshape(4, -1), axis=1)
             / np.linalg.norm(IMAGES.reshape(4, -1), axis=1))
    np.testing.assert_allclose(ratio, fraction, rtol=1e-4)


def test_blur_keeps_shape_and_range_and_removes_detail():
    out = blur(IMAGES, 16).numpy()
    assert out.shape == IMAGES.shape and out.min() >= 0 and out.max() <= 1
    assert np.abs(np.diff(out, axis=2)).mean() < np.abs(np.diff(IMAGES, axis=2)).mean()


def test_blur_defaults_to_half_the_side_and_refuses_sizes_that_do_not_blur():
    np.testing.assert_array_equal(blur(IMAGES).numpy(), blur(IMAGES, 16).numpy())
    digits = IMAGES[:, :8, :8, :1]
    np.testing.assert_array_equal(blur(digits).numpy(), blur(digits, 4).numpy())
    for size in (0, 8, 16):
        with pytest.raises(UserError, match=r"blur size must lie in \[1, 7\] for 8x8 images"):
            blur(digits, size)


def test_windowed_frames_touch_only_the_window():
    noisy = gaussian_noise(IMAGES, 0.5, seed=(0, 0))
    frames = windowed_frames(tf.constant(IMAGES), noisy, 5, start=2, window=2).numpy()
    for t in range(5):
        expected = noisy.numpy() if t in (1, 2) else IMAGES
        np.testing.assert_array_equal(frames[:, t], expected)
    with pytest.raises(UserError, match="outside"):
        windowed_frames(tf.constant(IMAGES), noisy, 5, start=4, window=3)


def test_run_on_frames_equals_direct_coding_for_identical_frames():
    model = build_model("alexnet", 10, 3, (32, 32, 3), width=1 / 16)
    frames = tf.repeat(tf.constant(IMAGES)[:, None], 3, axis=1)
    np.testing.assert_allclose(run_on_frames(model, frames).numpy(),
                               model(IMAGES, training=False).numpy(), atol=1e-6)
