"""Image sources behind ``engine.train.data.load_data``: one module per kind of dataset.

Each ``open_*`` function turns a ``DataConfig`` into a ``RawData`` (unnormalised
images in [0, 1]); ``engine.train.data`` normalises, caches, shuffles and batches it.
"""


def first_line(error: BaseException) -> str:
    """An exception's first line: library messages can run to pages."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
