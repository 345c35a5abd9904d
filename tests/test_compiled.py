"""Compiled functions are cached on their model and go with it."""
import gc
import weakref

import keras
import numpy as np
import tensorflow as tf

from tic_tf.attacks import fgsm
from tic_tf.compiled import cached
from tic_tf.models import build_model


def tiny_model():
    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Dense(2)(inputs))


def compiled_forward(model):
    return cached(model, "forward", lambda: tf.function(lambda x: model(x)))


def test_a_model_is_compiled_once_and_freed_when_dropped(tmp_path):
    model = tiny_model()
    function = compiled_forward(model)
    function(tf.ones((1, 3)))
    assert compiled_forward(model) is function
    assert compiled_forward(tiny_model()) is not function  # another model, its own
    tf.saved_model.save(model, str(tmp_path / "saved"))  # the functions are no part of it
    assert not hasattr(tf.saved_model.load(str(tmp_path / "saved")), "_tic_tf_compiled")
    alive = weakref.ref(model)
    del model, function
    gc.collect()
    assert alive() is None


def test_a_model_attacked_and_dropped_is_freed():
    model = build_model("alexnet", 10, 2, (8, 8, 1), width=1 / 16)
    images = np.random.default_rng(0).random((2, 8, 8, 1), dtype=np.float32)
    fgsm(model, images, np.array([0, 1]), 8 / 255, surrogate=("sigmoid", None))
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None
