"""LeNet-5 (LeCun et al., 1998): conv5-pool-conv5-pool-fc120-fc84-classifier.

ReLU and max pooling replace the paper's scaled tanh and trainable subsampling,
as most courses teach it now; the layer sizes are the paper's (61,706
parameters on 28x28x1 with 10 classes).
"""

from __future__ import annotations

import keras
from keras import layers

from engine.config import ModelConfig
from engine.models.common import image_input, logits_head


def build(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """LeNet-5 for ``input_shape`` images; ``cfg.dropout`` applies before the classifier."""
    inputs = image_input(input_shape)
    # "same" on conv1: a 28x28 MNIST image keeps the 28x28 map the paper got
    # from 32x32 with a valid conv, so both sizes end at the designed 5x5x16.
    x = layers.Conv2D(6, 5, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(16, 5, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(120, activation="relu", name="fc120")(x)
    x = layers.Dense(84, activation="relu", name="fc84")(x)
    outputs = logits_head(x, num_classes, cfg.dropout)
    return keras.Model(inputs, outputs, name="lenet5")
