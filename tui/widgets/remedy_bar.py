"""The remedy bar: appears on an ``oom`` event, one key per remedy and its effect.

The remedies' keys, labels and titles are read from :mod:`engine.remedies`,
the one catalogue: :func:`remedy_bindings` gives the app its keys.
"""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.widgets import Static

from engine.remedies import REMEDIES
from engine.run.protocol import Oom, RemedyOffer

REMEDIES_GROUP = Binding.Group("Remedy", compact=True)


def remedy_bindings() -> list[Binding]:
    """One binding per remedy in the catalogue: ``remedy('NAME')`` on its key, id ``remedy.NAME``."""
    return [
        Binding(
            remedy.key,
            f"remedy({remedy.name!r})",
            remedy.label,
            tooltip=f"{remedy.title[0].upper()}{remedy.title[1:]}; the worker restarts from a checkpoint",
            id=f"remedy.{remedy.name}",
            group=REMEDIES_GROUP,
        )
        for remedy in REMEDIES.values()
    ]


def remedy_title(name: str) -> str:
    """What the remedy ``name`` does, in one line ("" for a name the catalogue lacks)."""
    remedy = REMEDIES.get(name)
    return remedy.title if remedy else ""


class RemedyBar(Static):
    """Lists the remedies an OOM offers; hidden (no ``-open`` class) otherwise."""

    def offer(self, oom: Oom, remedies: list[RemedyOffer]) -> None:
        """Show the remedies of ``oom`` (each with its key: RunFacts.remedies_offered)."""
        step = "?" if oom.step is None else oom.step
        batch = "?" if oom.batch_size is None else oom.batch_size
        lines = [
            Text.assemble(
                (" OUT OF MEMORY ", "bold white on red"),
                f" step {step}, batch {batch}: press a key",
            )
        ]
        for remedy in remedies:
            lines.append(
                Text.assemble(
                    (f" {remedy.key or ' '} ", "bold reverse"),
                    (f" {remedy.name:<17}", "bold"),
                    remedy.effect or remedy.title,
                )
            )
        lines.append(
            Text.assemble(
                (" x ", "bold reverse"), (f" {'stop':<17}", "bold"), "checkpoint and end the run"
            )
        )
        text = Text("\n").join(lines)
        text.no_wrap = True  # one line per remedy: its key stays beside its effect
        text.overflow = "ellipsis"
        self.update(text)
        self.add_class("-open")

    def close(self) -> None:
        """Hide the bar (a no-op when hidden: an update would lay the screen out again)."""
        if self.has_class("-open"):
            self.remove_class("-open")
            self.update("")
