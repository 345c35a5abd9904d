"""Input corruptions in [0, 1] pixel space: Gaussian noise, blur, and time-windowed noise."""
import tensorflow as tf

from tic_tf.errors import UserError


def gaussian_noise(images, fraction=0.5, seed=(0, 0)):
    """Add Gaussian noise whose l2 norm is `fraction` of each image's l2 norm.

    The noise direction is Gaussian and its norm is set exactly; pixels are not clipped, so
    the relative norm holds (the models accept any real input).
    """
    if fraction < 0:
        raise UserError(f"noise fraction must be >= 0, got {fraction}.")
    images = tf.convert_to_tensor(images, tf.float32)
    noise = tf.random.stateless_normal(tf.shape(images), seed)
    axes = list(range(1, images.shape.rank))
    scale = fraction * tf.norm(tf.reshape(images, [tf.shape(images)[0], -1]), axis=1) / (
        tf.norm(tf.reshape(noise, [tf.shape(noise)[0], -1]), axis=1) + 1e-12)
    return images + noise * tf.reshape(scale, [-1] + [1] * len(axes))


def blur(images, size=None):
    """Downsample to `size` x `size` and upsample back, both bilinear; by default to half the
    image side (16 for 32x32 images, the paper's setting; 4 for 8x8 digits)."""
    images = tf.convert_to_tensor(images, tf.float32)
    height, width = images.shape[1:3]
    size = blur_size(images.shape, size)
    small = tf.image.resize(images, [size, size], method="bilinear", antialias=False)
    return tf.image.resize(small, [height, width], method="bilinear")


def blur_size(image_shape, size=None):
    """The side `blur` resizes images `[batch, H, W, C]` to: `size`, or half the smaller side."""
    height, width = image_shape[1:3]
    size = min(height, width) // 2 if size is None else int(size)
    if not 1 <= size < min(height, width):
        raise UserError(f"blur size must lie in [1, {min(height, width) - 1}] for "
                        f"{height}x{width} images (smaller than the image, or nothing is "
                        f"blurred), got {size}.")
    return size


def check_window(start, window, timesteps):
    """A window of timesteps [start, start + window - 1], counted from 1, must lie in [1, T]."""
    if window < 1 or start < 1 or start + window - 1 > timesteps:
        raise UserError(f"timestep window [{start}, {start + window - 1}] lies outside "
                        f"[1, {timesteps}]; choose start >= 1, window >= 1, "
                        "start + window - 1 <= T.")


def windowed_frames(clean, corrupted, timesteps, start, window):
    """Frames `[batch, T, ...]`: `corrupted` during timesteps [start, start+window-1], else
    clean."""
    check_window(start, window, timesteps)
    clean = tf.convert_to_tensor(clean, tf.float32)
    corrupted = tf.convert_to_tensor(corrupted, tf.float32)
    inside = tf.reshape(tf.cast((tf.range(1, timesteps + 1) >= start)
                                & (tf.range(1, timesteps + 1) < start + window), clean.dtype),
                        [1, timesteps] + [1] * (clean.shape.rank - 1))
    return clean[:, None] * (1 - inside) + corrupted[:, None] * inside
