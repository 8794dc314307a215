"""Builders for tests/test_models.py's ``model.arch = "user_models:..."`` cases."""

import keras
from keras import layers

NOT_CALLABLE = 42


def tiny_cnn(input_shape, num_classes, width=8):
    """A working user model: one conv, pooling, float32 logits."""
    inputs = keras.Input(shape=input_shape)
    x = layers.Conv2D(width, 3, activation="relu")(inputs)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, dtype="float32")(x)
    return keras.Model(inputs, outputs, name="tiny_cnn")


class _Subclassed(keras.Model):
    def __init__(self, num_classes):
        super().__init__(name="subclassed")
        self.pool = layers.GlobalAveragePooling2D()
        self.dense = layers.Dense(num_classes)

    def call(self, images):
        return self.dense(self.pool(images))


def subclassed(input_shape, num_classes):
    """A working subclassed model: only running it tells its output shape."""
    return _Subclassed(num_classes)


def returns_a_list(input_shape, num_classes):
    return [input_shape, num_classes]


def wrong_width(input_shape, num_classes):
    return tiny_cnn(input_shape, num_classes + 1)


def fixed_input(input_shape, num_classes):
    return tiny_cnn((28, 28, 1), num_classes)


def raises(input_shape, num_classes):
    raise RuntimeError("boom\nsecond line")
