"""The queue's part of the header: ``queue 3 waiting · 12m05s left on 1 running``.

A widget of its own beside :class:`tui.widgets.header.RunHeader`, so the
run's line and the queue's are drawn (and changed) apart. It reads the
queue itself, in a thread worker, every :data:`QUEUE_POLL_SECONDS`; the
next read is armed when the last one is done, so slow reads never pile up.
It is hidden while nothing waits or runs.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import work
from textual.message import Message

from tui.queue_link import QueueLink, QueueView
from tui.widgets.diffed import DiffedWidget

QUEUE_POLL_SECONDS = 2.0


def short_duration(seconds: float) -> str:
    """``2h05m``, ``12m`` or ``45s``: to the minute, so a queue's time left changes once a minute."""
    hours, minutes = divmod(int(seconds // 60), 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m" if minutes else f"{int(seconds)}s"


def queue_line(view: QueueView, width: int | None = None) -> str:
    """One line: ``queue 3 waiting · 12m left on 1 running``; empty with nothing to do.

    How long the waiting runs take is not known before they run, so the line
    counts them and gives the live runs' time left (the longest of those
    known). Longer than ``width``, it says ``queue 3 · 1 running 12m left``.
    """
    waiting, running = len(view.waiting), len(view.running)
    if not (waiting or running):
        return ""
    eta = view.running_eta()
    head = "queue paused · " if view.paused else "queue "
    line = f"{head}{waiting} waiting"
    if running:
        left = f"{short_duration(eta)} left on " if eta is not None else ""
        line += f" · {left}{running} running"
    if width is None or len(line) <= width:
        return line
    line = f"{head}{waiting} · {running} running"
    return line + (f" {short_duration(eta)} left" if running and eta is not None else "")


class QueueRead(Message):
    """The queue was read (``view``), or reading it failed (``error``)."""

    def __init__(self, view: QueueView | None, error: str | None = None) -> None:
        super().__init__()
        self.view = view
        self.error = error


class QueueBadge(DiffedWidget):
    """The queue in a few words, right of the run's header; polls the queue itself.

    Args:
        link: the queue (the app's ``queue_link`` when None).
        interval: seconds between the end of one read and the start of the next.
    """

    def __init__(self, link: QueueLink | None = None, interval: float = QUEUE_POLL_SECONDS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.link = link
        self.interval = interval
        self.view: QueueView | None = None
        self.reads = 0
        """Reads done so far, for tests."""

    def on_mount(self) -> None:
        if self.link is None:
            self.link = getattr(self.app, "queue_link", None) or QueueLink()
        self._read()

    @work(thread=True, exclusive=True, group="queue-badge", exit_on_error=False)
    def _read(self) -> None:
        try:
            self.post_message(QueueRead(self.link.read()))
        except Exception as error:  # noqa: BLE001 - a broken queue file is a word in the header
            self.post_message(QueueRead(None, error=str(error)))

    def on_queue_read(self, message: QueueRead) -> None:
        message.stop()
        self.reads += 1
        self.show_view(message.view, message.error)
        if self.is_mounted:
            self.set_timer(self.interval, self._poll)

    def _poll(self) -> None:
        # Under another screen (the queue screen reads for itself) the header is not seen.
        if self.screen is self.app.screen:
            self._read()
        else:
            self.set_timer(self.interval, self._poll)

    def show_view(self, view: QueueView | None, error: str | None = None) -> None:
        """Show ``view`` (hidden when nothing waits or runs), or that the queue cannot be read."""
        self.view = view
        room = self.app.size.width // 2 - 2  # half the header row (max-width), less the padding
        line = "queue unreadable" if error else queue_line(view, room) if view else ""
        self.set_class(bool(line), "-shown")
        self.set_class(bool(error) or bool(view and view.paused), "-paused")
        self.tooltip = error
        resized = len(line) != len(getattr(self._content, "plain", ""))
        self.show(Text(line, no_wrap=True, overflow="ellipsis"))
        if resized:
            self.refresh(layout=True)  # the width is the line's (width: auto)
