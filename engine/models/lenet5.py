"""LeNet-5 (LeCun et al., 1998): conv5-pool-conv5-pool-fc120-fc84-classifier on 32x32 images.

The geometry is the paper's: valid 5x5 convolutions on a 32x32 input leave
28x28x6, then 10x10x16, and the second pooling the 5x5x16 map that fc120 was
designed on: 61,706 parameters on 32x32x1 with 10 classes, the count usually
quoted for LeNet-5. The paper fed MNIST's 28x28 digits centred in a 32x32
field; images smaller than that are zero-padded to 32x32 here likewise, so
28x28 builds the same network. Larger images give larger maps and a wider
fc120.

Where this differs from the paper, as most courses teach it now: ReLU and
max pooling replace the scaled tanh and the trainable subsampling (12 + 32
parameters there), C3 connects to all six maps rather than the paper's
partial table (2,416 parameters, not 1,516), and a dense layer of logits
replaces the RBF output units. The paper's own network has 60,000 trainable
parameters.
"""

from __future__ import annotations

import keras
from keras import layers

from engine.config import ModelConfig
from engine.models.common import image_input, logits_head

INPUT_SIZE = 32
"""The paper's input side: smaller images are padded up to it."""


def build(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """LeNet-5 for ``input_shape`` images; ``cfg.dropout`` applies before the classifier."""
    inputs = image_input(input_shape)
    x = padded_to_input_size(inputs, input_shape)
    x = layers.Conv2D(6, 5, activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(16, 5, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(120, activation="relu", name="fc120")(x)
    x = layers.Dense(84, activation="relu", name="fc84")(x)
    outputs = logits_head(x, num_classes, cfg.dropout)
    return keras.Model(inputs, outputs, name="lenet5")


def padded_to_input_size(x: keras.KerasTensor, input_shape: tuple[int, int, int]) -> keras.KerasTensor:
    """``x`` centred in a field of at least 32x32, zeros around it (nothing to do when it is).

    Zeros are the mean pixel of normalised images rather than the paper's
    background level: a uniform border either way.
    """
    height, width = input_shape[:2]
    extra_rows, extra_columns = max(0, INPUT_SIZE - height), max(0, INPUT_SIZE - width)
    if not extra_rows and not extra_columns:
        return x
    padding = (
        (extra_rows // 2, extra_rows - extra_rows // 2),
        (extra_columns // 2, extra_columns - extra_columns // 2),
    )
    return layers.ZeroPadding2D(padding, name="pad")(x)
