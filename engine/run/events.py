"""events.jsonl: the append-only record of a run, and its readers.

One JSON object a line, each with ``type`` and ``time``, each declared in
:mod:`engine.run.protocol`: the writer checks every event against its
declaration, and the readers hand out the declared, typed events. The writer
buffers lines and appends them in one ``write`` per batch, so a reader sees
whole batches; a crash mid-write can only tear the last line. Readers skip a
torn line, and a line that does not fit its declaration, and count both in
``skipped``: never fatal. TF-free: the UI and the CLI read events with this module.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.run import protocol
from engine.run.protocol import Event

EVENTS_FILE = "events.jsonl"


class EventWriter:
    """Appends events to a run's events.jsonl, flushing a batch at a time.

    Args:
        path: the events file (created if missing).
        flush_interval: seconds a buffered ``step`` event may wait; any other
            event type is written at once, because viewers act on it.
    """

    def __init__(self, path: str | os.PathLike, flush_interval: float = 0.5) -> None:
        self.path = Path(path)
        self.flush_interval = flush_interval
        self._buffer: list[str] = []
        self._last_flush = time.monotonic()
        # O_APPEND makes each write land at the end even with another writer.
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if not _ends_with_newline(self.path):
            # A worker killed mid-write left a torn line; end it so our first
            # event starts a line of its own instead of being glued to garbage.
            os.write(self._fd, b"\n")

    def emit(self, type: str, **fields: Any) -> dict:
        """Record one event; returns it as written (plain JSON data).

        Raises:
            protocol.EventError: the event does not fit its declaration in
                :mod:`engine.run.protocol` (an unknown type or field, a wrong type).
        """
        event = {"type": type, "time": round(time.time(), 3), **protocol.plain(fields)}
        protocol.check(event)
        # json, not msgspec: it writes NaN as NaN (msgspec would write null) and keeps the
        # '{"type": "step", ' spacing that readers recognise step lines by.
        self._buffer.append(json.dumps(event) + "\n")
        due = time.monotonic() - self._last_flush >= self.flush_interval
        if type != "step" or due:
            self.flush()
        return event

    def flush(self) -> None:
        """Write every buffered line in one append."""
        if self._buffer:
            data = "".join(self._buffer).encode()
            self._buffer.clear()
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush and close; safe to call twice."""
        if self._fd >= 0:
            self.flush()
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return True
        handle.seek(size - 1)
        return handle.read(1) == b"\n"


def parse_line(line: bytes | str) -> Event | None:
    """One event from one line, or None for a torn, garbage or wrong-typed line."""
    return protocol.parse(line)


class EventTail:
    """Reads the events a file gains since the last read.

    Only complete lines (ending in a newline) are parsed; a partial last line
    waits for its end. Garbage and wrong-typed lines are counted in
    ``skipped`` and ignored.
    """

    def __init__(self, path: str | os.PathLike, offset: int = 0) -> None:
        self.path = Path(path)
        self.offset = offset
        self.skipped = 0

    def read_new(self, max_bytes: int = 8 << 20) -> list[Event]:
        """The complete events appended since the last call (about ``max_bytes`` of them).

        Returns an empty list only at the end of the complete lines, never for
        a chunk that happened to hold nothing but garbage.
        """
        while True:
            events, advanced = self._read_chunk(max_bytes)
            if events or not advanced:
                return events

    def _read_chunk(self, max_bytes: int) -> tuple[list[Event], bool]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read(max_bytes)
        except FileNotFoundError:
            return [], False
        end = chunk.rfind(b"\n")
        if end < 0:
            return [], False
        self.offset += end + 1
        return self.parse_lines(chunk[: end + 1].splitlines()), True

    def parse_lines(self, lines: list[bytes]) -> list[Event]:
        """The events of ``lines``; the unreadable ones (blank lines aside) counted in ``skipped``."""
        events = []
        for line in lines:
            event = protocol.parse(line)
            if event is not None:
                events.append(event)
            elif line.strip():
                self.skipped += 1
        return events

    def at_end(self) -> bool:
        """True when every complete line has been read."""
        try:
            return self.offset >= self.path.stat().st_size
        except FileNotFoundError:
            return True


STEP_LINE_PREFIX = b'{"type": "step",'
"""How EventWriter (json.dumps) starts a step line: the bulk of a long run's file is
recognised by it without parsing."""


def iter_events(path: str | os.PathLike) -> Iterator[Event]:
    """Every readable event of a file, in order; torn or garbage lines skipped."""
    tail = EventTail(path)
    while True:
        batch = tail.read_new()
        if not batch:
            # A final line without a newline may still be whole JSON (an
            # editor or a crash after the last byte); take it if it parses.
            rest = _unterminated_rest(tail)
            if rest is not None:
                yield rest
            return
        yield from batch


def _unterminated_rest(tail: EventTail) -> Event | None:
    try:
        with open(tail.path, "rb") as handle:
            handle.seek(tail.offset)
            rest = handle.read()
    except FileNotFoundError:
        return None
    return parse_line(rest) if rest.strip() else None


def read_events(path: str | os.PathLike) -> list[Event]:
    """All readable events of a file as a list."""
    return list(iter_events(path))


def last_event_of(
    path: str | os.PathLike, types: tuple[str, ...], window: int = 1 << 16
) -> Event | None:
    """The last event of one of ``types``, reading backwards from the end.

    ``runs`` lists many runs; reading each file whole would cost time in
    proportion to every run's length, so it looks at the tail first.
    """
    try:
        size = os.path.getsize(path)
    except OSError:
        return None
    start = max(0, size - window)
    with open(path, "rb") as handle:
        handle.seek(start)
        lines = handle.read().splitlines()
    for line in reversed(lines):
        event = protocol.parse(line)
        if event is not None and event.type in types:
            return event
    if start > 0:
        return _last_event_scanning(path, types)
    return None


def _last_event_scanning(path: str | os.PathLike, types: tuple[str, ...]) -> Event | None:
    found = None
    for event in iter_events(path):
        if event.type in types:
            found = event
    return found
