"""What a warm worker loads before it is handed a run: what a run imports, and no device touched.

It also converts the trainer's graph functions with AutoGraph ahead (a
second of a run's first call here): AutoGraph caches a conversion by the
function's code, so the run's own tracing finds them done. Converting
rewrites Python source; it runs no op.

Importing TensorFlow loads its libraries (CUDA's among them) but starts no
device: that waits for the first op, a device listing or a memory-growth
call, and a run makes all of those after the hand-off, in
:class:`engine.train.trainer.Trainer`. So a warm worker holds nothing on a
GPU, and CUDA_VISIBLE_DEVICES is read when the run starts, as in a cold
start (the spawner also refuses a warm worker whose environment differs:
:mod:`engine.run.warm`).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import textwrap
from collections.abc import Callable, Iterator

# The modules a run imports lazily, found by running one: the data sets'
# scikit-learn loaders, the end-of-run evaluation, NVML for the memory check.
LAZY_IMPORTS = (
    "engine.train.trainer",
    "engine.train.checkpoints",
    "engine.train.faults",
    "engine.train.memory",
    "engine.train.evaluate",
    "engine.gpu",
    "pynvml",
    "sklearn.datasets",
    "sklearn.model_selection",
    "sklearn.metrics",
)


def load_for_training() -> None:
    """Import TensorFlow, Keras, every model family and what a run loads on its way to the first step."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # as engine.train.worker, in case it runs alone
    import tensorflow as tf

    from engine.models.registry import FAMILIES

    for name in LAZY_IMPORTS:
        importlib.import_module(name)
    for family in FAMILIES.values():
        importlib.import_module(f"engine.models.{family.module}")
    tf.summary.create_file_writer  # noqa: B018 - TensorBoard's summary ops load on first access
    from engine.train.trainer import Trainer

    convert_ahead(Trainer)


def convert_ahead(cls: type) -> int:
    """Convert with AutoGraph, as tracing will, the methods ``cls`` compiles and what they call.

    The methods are those handed to ``tf.function(self.NAME, ...)`` in the
    class; what they reach is found in their source: ``self.NAME`` methods
    and engine functions they call. A function AutoGraph cannot convert
    ahead is left to the run, as it would be anyway.

    Returns:
        How many conversions were made.
    """
    from tensorflow.python.autograph.core import converter
    from tensorflow.python.autograph.impl import api

    # The options tf.function converts its function with, and those of the calls inside it.
    compiled = converter.ConversionOptions(recursive=True, user_requested=True, optional_features=None)
    called = compiled.call_options()
    entries = [vars(cls)[name] for name in _compiled_methods(cls) if inspect.isfunction(vars(cls).get(name))]
    work = [(fn, compiled) for fn in entries] + [(fn, called) for fn in _reached(entries, cls)]
    done = 0
    for fn, options in work:
        try:
            api._convert_actual(fn, converter.ProgramContext(options=options))  # noqa: SLF001 - no public way
            done += 1
        except Exception:  # noqa: BLE001, S112 - the run converts it itself
            continue
    return done


def _compiled_methods(cls: type) -> list[str]:
    """The NAMEs in ``tf.function(self.NAME, ...)`` within ``cls``."""
    names = []
    for node in ast.walk(_tree(cls)):
        if isinstance(node, ast.Call) and _is_tf_function(node.func) and node.args:
            target = _self_attribute(node.args[0])
            if target:
                names.append(target)
    return names


def _reached(entries: list[Callable], cls: type) -> list[Callable]:
    """The methods and engine functions that ``entries`` reach, by their source, without the entries."""
    seen: dict[object, Callable] = {}
    todo = list(entries)
    while todo:
        for callee in _referenced(todo.pop(), cls):
            if callee.__code__ not in seen:
                seen[callee.__code__] = callee
                todo.append(callee)
    return [fn for fn in seen.values() if fn not in entries]


def _referenced(fn: Callable, cls: type) -> Iterator[Callable]:
    """Methods of ``cls`` that ``fn`` names as ``self.NAME``, and engine functions it calls."""
    for node in ast.walk(_tree(fn)):
        name = _self_attribute(node)
        if name and inspect.isfunction(vars(cls).get(name)):
            yield vars(cls)[name]
        elif isinstance(node, ast.Call):
            target = _engine_function(node.func, fn.__globals__)
            if target is not None:
                yield target


def _engine_function(node: ast.expr, names: dict) -> Callable | None:
    """The engine function a call's ``NAME`` or ``module.NAME`` is, else None."""
    if isinstance(node, ast.Name):
        target = names.get(node.id)
    elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        module = names.get(node.value.id)
        target = getattr(module, node.attr, None) if inspect.ismodule(module) else None
    else:
        return None
    return target if inspect.isfunction(target) and target.__module__.startswith("engine.") else None


def _tree(obj: object) -> ast.AST:
    try:
        return ast.parse(textwrap.dedent(inspect.getsource(obj)))
    except (OSError, TypeError, SyntaxError):
        return ast.Module(body=[], type_ignores=[])


def _is_tf_function(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "function"
        and isinstance(node.value, ast.Name)
        and node.value.id == "tf"
    )


def _self_attribute(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr
    return None
