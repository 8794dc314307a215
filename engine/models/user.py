"""A user's own network: ``model.arch = "package.module:function"``.

The function is called as ``function(input_shape=..., num_classes=...,
**model.kwargs)`` and must return a ``keras.Model`` whose output (each output,
if several) is logits ``[batch, num_classes]``. Whatever goes wrong on the way,
import, lookup, call or result, becomes one ConfigError line naming the arch;
the original exception stays attached as its cause for the worker's log.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from engine.config import ConfigError, ModelConfig
from engine.models.common import one_line


def build(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """Import, call and check the user's builder named by ``cfg.arch``."""
    builder = load_builder(cfg.arch)
    model = _call_builder(builder, cfg, input_shape, num_classes)
    _check_model(model, cfg.arch, input_shape, num_classes)
    return model


def load_builder(arch: str) -> Callable[..., Any]:
    """The callable that ``"package.module:function"`` names."""
    module_name, _, function_name = arch.partition(":")
    if not module_name.strip() or not function_name.strip():
        raise ConfigError(f"model.arch: got {arch!r}; expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # a syntax error in the user's file is their config mistake too
        raise ConfigError(
            f"model.arch {arch!r}: cannot import {module_name!r}: {one_line(error)}"
        ) from error
    if not hasattr(module, function_name):
        raise ConfigError(f"model.arch {arch!r}: module {module_name!r} has no {function_name!r}")
    builder = getattr(module, function_name)
    if not callable(builder):
        raise ConfigError(
            f"model.arch {arch!r}: {function_name!r} is a {type(builder).__name__}, not a function"
        )
    return builder


def _call_builder(builder, cfg: ModelConfig, input_shape, num_classes: int) -> Any:
    try:
        return builder(input_shape=input_shape, num_classes=num_classes, **cfg.kwargs)
    except ConfigError:
        raise
    except Exception as error:
        if type(error).__name__ == "ResourceExhaustedError":
            raise  # out of memory is the trainer's to handle, not a config mistake
        raise ConfigError(
            f"model.arch {cfg.arch!r}: the builder raised {type(error).__name__}: {one_line(error)}"
        ) from error


def _check_model(model: Any, arch: str, input_shape, num_classes: int) -> None:
    if not isinstance(model, keras.Model):
        raise ConfigError(
            f"model.arch {arch!r}: the builder returned {type(model).__name__}; "
            "expected a keras.Model"
        )
    _check_input(model, arch, input_shape)
    shapes = _output_shapes(model, input_shape)
    if not all(len(shape) == 2 and shape[1] == num_classes for shape in shapes):
        shown = ", ".join(str(list(shape)) for shape in shapes)
        raise ConfigError(
            f"model.arch {arch!r}: the model outputs {shown}; "
            f"expected logits [batch, {num_classes}] (num_classes = {num_classes})"
        )


def _check_input(model: keras.Model, arch: str, input_shape) -> None:
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):  # a subclassed model has no symbolic inputs
        return
    if not inputs or len(inputs) != 1:
        return
    expected = tuple(inputs[0].shape[1:])
    fits = len(expected) == 3 and all(
        e in (None, g) for e, g in zip(expected, input_shape, strict=True)
    )
    if not fits:
        raise ConfigError(
            f"model.arch {arch!r}: the model takes images of shape {list(expected)}; "
            f"the data has {list(input_shape)}"
        )


def _output_shapes(model: keras.Model, input_shape) -> list[tuple]:
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        outputs = None
    if not outputs:
        # A subclassed model is known only by running it: one blank image is cheap.
        outputs = keras.tree.flatten(model(np.zeros((1, *input_shape), "float32")))
    return [tuple(output.shape) for output in outputs]
