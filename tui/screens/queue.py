"""The queue screen (``u``): queued runs and sweep trials with their state and ETA.

Reorder waiting entries (``K``/``J`` or Shift+arrows), remove one (``x``),
pause or resume the queue (``p``), open an entry's run (Enter: attached
like a run opened from the runs screen). Every read and change of the queue
file runs in a thread worker; the screen reads the queue again
:data:`REFRESH_SECONDS` after the last read ended, so reads never pile up.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Static

from engine.run.queue import CLAIMED, ENDED, LAUNCHED, QUEUED
from tui.queue_link import QueueLink, QueueView
from tui.widgets.header import STATUS_STYLES
from tui.widgets.queue_badge import QueueRead, queue_line, short_duration

REFRESH_SECONDS = 1.5
COLUMNS = ("#", "ID", "PRESET", "STATE", "ETA", "SETTINGS")
"""The run id is on the line under the table: at 80 columns a column of them would push the rest out."""
STATE_STYLES = {QUEUED: "", CLAIMED: "yellow", LAUNCHED: "green"}
"""How an entry's state is drawn; an ended one takes its run's outcome's style."""


class QueueScreen(Screen[str | None]):
    """Dismissed with the run id to open, or None.

    Args:
        link: the queue to show and change.
        interval: seconds from the end of one read to the start of the next.
    """

    BINDINGS = [
        Binding("enter", "open", "Open", tooltip="Watch this entry's run (attach if live)", id="queue.open"),
        Binding(
            "K,shift+up",
            "move(-1)",
            "Move up",
            tooltip="Start this waiting entry one place sooner",
            id="queue.move-up",
        ),
        Binding(
            "J,shift+down",
            "move(1)",
            "Move down",
            tooltip="Start this waiting entry one place later",
            id="queue.move-down",
        ),
        Binding("x,delete", "remove", "Remove", tooltip="Take this waiting entry out of the queue", id="queue.remove"),
        Binding(
            "p",
            "pause_queue",
            "Pause queue",
            tooltip="Pause the queue (running runs go on) or resume it",
            id="queue.pause",
        ),
        Binding("f5", "reload", "Reload", show=False, tooltip="Read the queue again now", id="queue.reload"),
        Binding("escape,u", "close", "Back", tooltip="Back to the main screen", id="queue.close"),
    ]

    def __init__(self, link: QueueLink, interval: float = REFRESH_SECONDS) -> None:
        super().__init__()
        self.link = link
        self.interval = interval
        self.view: QueueView | None = None
        self._rows: list[tuple] = []
        self._timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield Static("queue: reading…", id="queue-title")
        yield DataTable(id="queue-table", cursor_type="row", zebra_stripes=True)
        yield Static(id="queue-detail")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns(*COLUMNS)
        self._read()

    # -- reading ------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="queue-read", exit_on_error=False)
    def _read(self) -> None:
        try:
            self.post_message(QueueRead(self.link.read()))
        except Exception as error:  # noqa: BLE001 - an unreadable queue is a line, not a crash
            self.post_message(QueueRead(None, error=str(error)))

    def on_queue_read(self, message: QueueRead) -> None:
        message.stop()
        if message.view is not None:
            self.show_view(message.view)
        else:
            self.query_one("#queue-title", Static).update(Text(f"queue: {message.error}", "red"))
        if self._timer is not None:
            self._timer.stop()  # a change's read came between: one chain of reads, not two
        self._timer = self.set_timer(self.interval, self._read)

    def show_view(self, view: QueueView) -> None:
        """Draw ``view``: the title line and the table, keeping the cursor on its entry."""
        table = self.query_one(DataTable)
        current, row_before = self._current(), table.cursor_row  # in the view before this one
        self.view = view
        self.query_one("#queue-title", Static).update(self._title(view))
        rows = [self._row(view, entry) for entry in view.entries]
        if rows == self._rows:
            self._show_detail()
            return
        self._rows = rows
        table.clear()
        for entry, row in zip(view.entries, rows, strict=True):
            table.add_row(*row, key=str(entry.id))
        ids = [entry.id for entry in view.entries]
        if current is not None and current.id in ids:
            table.move_cursor(row=ids.index(current.id))  # it moved: the cursor goes with it
        elif ids:
            table.move_cursor(row=min(row_before or 0, len(ids) - 1))  # it went: the one below
        self._show_detail()

    @staticmethod
    def _title(view: QueueView) -> Text:
        line = queue_line(view) or ("queue empty · Q on a preset queues a run" if not view.entries else "queue idle")
        runner = f"runner pid {view.runner_pid}" if view.runner_pid else "no runner"
        if view.paused:
            runner += " · p resumes"
        return Text.assemble((line, "bold"), "  ·  ", (runner, "dim"))

    @staticmethod
    def _row(view: QueueView, entry: Any) -> tuple:
        place = view.place(entry)
        what = entry.preset + (f" · {entry.sweep} #{entry.trial}" if entry.sweep else "")
        state = entry.outcome if entry.state == ENDED else entry.state
        style = STATUS_STYLES.get(state, "") if entry.state == ENDED else STATE_STYLES.get(state, "")
        eta = view.etas.get(entry.run_id) if entry.run_id else None
        return (
            str(place) if place else "-",
            str(entry.id),
            what,
            Text(state or "?", style),
            short_duration(eta) if eta is not None else "-",
            " ".join(entry.overrides) or "-",
        )

    def _current(self) -> Any | None:
        table = self.query_one(DataTable)
        entries = self.view.entries if self.view else []
        if not entries or table.cursor_row is None or table.cursor_row >= len(entries):
            return None
        return entries[table.cursor_row]

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        self._show_detail()

    def _show_detail(self) -> None:
        entry = self._current()
        if entry is None:
            text = Text("")
        else:
            run = f"run {entry.run_id} (Enter opens it)" if entry.run_id else "not started"
            text = Text.assemble(f"entry {entry.id} · ", (run, "bold"), f" · {entry.note}" if entry.note else "")
        self.query_one("#queue-detail", Static).update(text)

    # -- changing -----------------------------------------------------------------------

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        # The table takes Enter for itself and reports the row: same as "open".
        event.stop()
        self.action_open()

    def action_open(self) -> None:
        entry = self._current()
        if entry is None:
            return
        if not entry.run_id:
            self.notify(f"entry {entry.id} has not started: no run to open yet", severity="warning")
            return
        self.dismiss(entry.run_id)

    def action_move(self, delta: int) -> None:
        entry = self._current()
        if entry is not None:
            self._change(lambda link: link.move_by(entry.id, delta))

    def action_remove(self) -> None:
        entry = self._current()
        if entry is not None:
            self._change(lambda link: link.remove(entry.id))

    def action_pause_queue(self) -> None:
        self._change(lambda link: link.toggle_pause())

    def action_reload(self) -> None:
        self._read()

    def action_close(self) -> None:
        self.dismiss(None)

    @work(thread=True, group="queue-change", exit_on_error=False)
    def _change(self, change: Any) -> None:
        """Apply ``change(link)`` off the UI thread; its line (if any) or its error comes back as a notice."""
        try:
            self.post_message(QueueChanged(change(self.link)))
        except Exception as error:  # noqa: BLE001 - ConfigError above all: one line, not a crash
            self.post_message(QueueChanged(None, error=str(error)))

    def on_queue_changed(self, message: QueueChanged) -> None:
        message.stop()
        if message.error:
            self.notify(message.error, severity="error")
        elif message.said:
            self.notify(message.said)
        self._read()


class QueueChanged(Message):
    """A change to the queue was made (``said`` is its line, if any), or refused (``error``)."""

    def __init__(self, said: str | None, error: str | None = None) -> None:
        super().__init__()
        self.said = said
        self.error = error
