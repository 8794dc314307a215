"""The model zoo: one module per family, picked by ``model.arch``.

``build_model(cfg, input_shape, num_classes)`` returns a ``keras.Model`` whose
output is float32 logits ``[batch, num_classes]`` (GoogLeNet with ``aux_heads``
returns ``[main, aux1, aux2]``). ``min_input_size(cfg)`` is the smallest image
side the architecture accepts.

Importing this package does not import TensorFlow: the UI can check an image
size as the user types it; Keras loads only when a model is built.
"""

from engine.models.registry import build_model, min_input_size

__all__ = ["build_model", "min_input_size"]
