"""The TensorFlow side of the engine: the worker process and everything it trains with.

Only a worker process (``python -m engine.train.worker``) imports this package;
the run side and the front ends never do (an import-linter contract in pyproject.toml)."""
