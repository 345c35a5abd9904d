"""The per-model cache of compiled functions."""
import gc
import weakref

import keras
import tensorflow as tf

from tic_tf.compiled import MODELS_KEPT, cached


def tiny_model():
    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Dense(2)(inputs))


def compiled_forward(model):
    return cached(model, "forward", lambda: tf.function(lambda x: model(x)))


def test_a_model_is_compiled_once_and_freed_once_others_displace_it():
    first = tiny_model()
    function = compiled_forward(first)
    function(tf.ones((1, 3)))
    assert compiled_forward(first) is function
    alive = weakref.ref(first)
    del first, function
    for _ in range(MODELS_KEPT):
        model = tiny_model()
        compiled_forward(model)(tf.ones((1, 3)))
    del model
    gc.collect()
    assert alive() is None
