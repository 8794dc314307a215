"""The remedy bar: appears on an ``oom`` event, one key per remedy and its effect.

The remedies' keys, labels and titles are read from :mod:`engine.remedies`,
the one catalogue: :func:`remedy_bindings` gives the app its keys.
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.binding import Binding
from textual.widgets import Static

from engine.remedies import REMEDIES
from engine.run.protocol import Oom, RemedyOffer

REMEDIES_GROUP = Binding.Group("Remedies", compact=True)
"""While an OOM waits the footer shows the remedy keys as one entry, ``h/a/m/r Remedies``."""
NAME_WIDTH = 17
"""Cells for a remedy's name in the bar: the longest name and a space."""


def remedy_bindings() -> list[Binding]:
    """The remedy keys: for each remedy in the catalogue, the footer's entry, shown only while
    an OOM waits (``offered_remedy('NAME')``, id ``remedy.NAME.offered``), and ``remedy('NAME')``
    on the same key, id ``remedy.NAME``, which works whenever a run is live, out of the footer.

    A remedy works at any time, but the footer has no room for it at 80 columns
    while a run trains; the help screen and the palette list the keys.
    """
    remedies = list(REMEDIES.values())
    keys = [
        Binding(
            remedy.key,
            f"remedy({remedy.name!r})",
            remedy.label,
            show=False,
            tooltip=f"{remedy.title[0].upper()}{remedy.title[1:]}; the worker restarts from a checkpoint",
            id=f"remedy.{remedy.name}",
        )
        for remedy in remedies
    ]
    offered = [
        Binding(
            remedy.key,
            f"offered_remedy({remedy.name!r})",
            remedy.label,
            # Slashes between the keys: the footer joins a group's keys with nothing between.
            key_display=remedy.key if index == len(remedies) - 1 else f"{remedy.key}/",
            tooltip=f"{remedy.title[0].upper()}{remedy.title[1:]} (the remedy bar says what it changes)",
            id=f"remedy.{remedy.name}.offered",
            group=REMEDIES_GROUP,
        )
        for index, remedy in enumerate(remedies)
    ]
    # The footer's first: of two bindings on one key the footer shows the first that applies.
    return offered + keys


def remedy_title(name: str) -> str:
    """What the remedy ``name`` does, in one line ("" for a name the catalogue lacks)."""
    remedy = REMEDIES.get(name)
    return remedy.title if remedy else ""


class RemedyBar(Static):
    """Lists the remedies an OOM offers; hidden (no ``-open`` class) otherwise."""

    plain = ""
    """What the bar says, one line per remedy, unwrapped (tests and screen readers read it)."""

    def offer(self, oom: Oom, remedies: list[RemedyOffer]) -> None:
        """Show the remedies of ``oom`` (each with its key: RunFacts.remedies_offered).

        One row per remedy: its key, its name, and its effect, which wraps
        under itself when the bar is narrow, so no word of it is lost.
        """
        step = "?" if oom.step is None else oom.step
        batch = "?" if oom.batch_size is None else oom.batch_size
        title = Text.assemble(
            (" OUT OF MEMORY ", "bold white on red"),
            f" step {step}, batch {batch}: press a remedy's key, or ",
            ("x", "bold"),
            " to stop",
        )
        table = Table.grid(padding=(0, 1, 0, 0), expand=True)
        table.add_column(no_wrap=True)
        table.add_column(no_wrap=True, width=NAME_WIDTH)
        table.add_column(ratio=1, overflow="fold")
        for remedy in remedies:
            table.add_row(
                Text(f" {remedy.key or ' '} ", "bold reverse"),
                Text(remedy.name, "bold"),
                Text(remedy.effect or remedy.title),
            )
        self.plain = "\n".join([title.plain, *(f"{r.key} {r.name} {r.effect or r.title}" for r in remedies)])
        self.update(Group(title, table))
        self.add_class("-open")

    def close(self) -> None:
        """Hide the bar (a no-op when hidden: an update would lay the screen out again)."""
        if self.has_class("-open"):
            self.remove_class("-open")
            self.plain = ""
            self.update("")
