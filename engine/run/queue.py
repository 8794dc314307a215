"""The run queue: runs waiting for a GPU, kept in one SQLite file under ``CONVDECK_HOME``.

A person adds entries (``convdeck queue add PRESET``); a detached runner
(:mod:`engine.run.queue_runner`) starts them as slots free up. Every change
is one transaction, and an entry passes through its states in an order that
lets a runner killed at any moment be replaced without losing or doubling a
run:

``queued`` -> ``claimed`` (the run id is chosen and recorded *before* its
directory exists) -> ``launched`` (the worker was started) -> ``ended``.

A new runner finds ``claimed`` entries and finishes their start: it makes
the directory if it is missing and starts the worker unless the run's lock
says one is already there. The lock (engine.run.lock) is what guarantees one
worker a run, so even a doubled start attempt starts one worker.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import ConfigError
from engine.run.store import convdeck_home

QUEUE_FILE = "queue.sqlite"
# PRAGMA user_version of the file; a file from a newer convdeck is refused, never rewritten.
SCHEMA_VERSION = 1

QUEUED, CLAIMED, LAUNCHED, ENDED = "queued", "claimed", "launched", "ended"
STATES = (QUEUED, CLAIMED, LAUNCHED, ENDED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    position REAL NOT NULL,
    preset TEXT NOT NULL,
    overrides TEXT NOT NULL DEFAULT '[]',
    gpus INTEGER NOT NULL DEFAULT 1,
    state TEXT NOT NULL DEFAULT 'queued',
    run_id TEXT,
    sweep TEXT,
    trial INTEGER,
    note TEXT NOT NULL DEFAULT '',
    added REAL NOT NULL,
    claimed REAL,
    ended REAL,
    outcome TEXT,
    devices TEXT
);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sweeps (name TEXT PRIMARY KEY, storage TEXT, added REAL NOT NULL);
"""


@dataclass
class Entry:
    """One queued run, as the queue file holds it."""

    id: int
    position: float
    preset: str
    overrides: list[str] = field(default_factory=list)
    gpus: int = 1
    state: str = QUEUED
    run_id: str | None = None
    sweep: str | None = None
    trial: int | None = None
    note: str = ""
    added: float = 0.0
    claimed: float | None = None
    ended: float | None = None
    outcome: str | None = None
    devices: str | None = None
    """The GPU indices the run was given (``CUDA_VISIBLE_DEVICES``), comma-separated."""

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Entry:
        data = dict(row)
        data["overrides"] = json.loads(data["overrides"] or "[]")
        return cls(**data)

    def as_json(self) -> dict:
        return dict(self.__dict__)


def queue_path(home: Path | None = None) -> Path:
    return (home or convdeck_home()) / QUEUE_FILE


class RunQueue:
    """The queue file: add, list, reorder, claim and finish entries, each in one transaction.

    Args:
        home: the convdeck home (``$CONVDECK_HOME`` when None).

    Raises:
        ConfigError: the file is from a newer convdeck, is not a queue, or cannot be written.
    """

    def __init__(self, home: Path | None = None) -> None:
        self.path = queue_path(home)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # isolation_level=None: transactions are ours (BEGIN IMMEDIATE below), not implicit.
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        except (OSError, sqlite3.Error) as error:
            raise ConfigError(f"cannot open the queue {self.path}: {error}") from None
        self._db.row_factory = sqlite3.Row
        self._open_schema()

    def _open_schema(self) -> None:
        try:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"{self.path} is a queue of version {version}, from a newer convdeck "
                    f"(this one reads version {SCHEMA_VERSION}); upgrade convdeck to use it"
                )
            with self._transaction() as db:
                # One statement at a time: executescript would commit our transaction first.
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as error:
            raise ConfigError(f"{self.path} is not a convdeck queue ({error}); move it aside") from None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock at once, so two runners (or a runner and
        # `queue add`) never both read "queued" and both claim the entry.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    # -- what a person does ------------------------------------------------------------

    def add(
        self,
        preset: str,
        overrides: list[str] | tuple[str, ...] = (),
        gpus: int = 1,
        sweep: str | None = None,
        trial: int | None = None,
        note: str = "",
    ) -> Entry:
        """Append an entry at the end of the queue."""
        if gpus < 1:
            raise ConfigError(f"--gpus must be at least 1; got {gpus}")
        with self._transaction() as db:
            last = db.execute("SELECT COALESCE(MAX(position), 0) FROM entries").fetchone()[0]
            cursor = db.execute(
                "INSERT INTO entries (position, preset, overrides, gpus, sweep, trial, note, added)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (last + 1, preset, json.dumps(list(overrides)), gpus, sweep, trial, note, time.time()),
            )
            return self._get(db, cursor.lastrowid)

    def entries(self, include_ended: bool = True) -> list[Entry]:
        """Entries in queue order: the ones still to start first, by position."""
        rows = self._db.execute(
            "SELECT * FROM entries ORDER BY state = 'ended', position, id"
        ).fetchall()
        found = [Entry.from_row(row) for row in rows]
        return found if include_ended else [e for e in found if e.state != ENDED]

    def get(self, entry_id: int) -> Entry:
        return self._get(self._db, entry_id)

    def remove(self, entry_id: int) -> Entry:
        """Take a waiting entry out of the queue; a started one is a run (stop it instead)."""
        with self._transaction() as db:
            entry = self._get(db, entry_id)
            if entry.state in (CLAIMED, LAUNCHED):
                raise ConfigError(
                    f"queue entry {entry_id} is running as {entry.run_id}; "
                    f"stop it with `convdeck ctl {entry.run_id} stop`"
                )
            db.execute("DELETE FROM entries WHERE id = ?", (entry_id,))
            return entry

    def move(self, entry_id: int, place: int) -> Entry:
        """Put a waiting entry at ``place`` (1 = next to start) among the waiting ones."""
        with self._transaction() as db:
            entry = self._get(db, entry_id)
            if entry.state != QUEUED:
                raise ConfigError(f"queue entry {entry_id} has already started ({entry.state}); only waiting ones move")
            waiting = [
                row["id"]
                for row in db.execute(
                    "SELECT id FROM entries WHERE state = 'queued' AND id != ? ORDER BY position, id",
                    (entry_id,),
                )
            ]
            if place < 1:
                raise ConfigError(f"a queue position counts from 1; got {place}")
            waiting.insert(min(place, len(waiting) + 1) - 1, entry_id)
            for index, other in enumerate(waiting, start=1):
                db.execute("UPDATE entries SET position = ? WHERE id = ?", (index, other))
            return self._get(db, entry_id)

    def set_paused(self, paused: bool) -> None:
        self._set("paused", "1" if paused else "0")

    def paused(self) -> bool:
        return self._setting("paused", "0") == "1"

    # -- what the runner does ----------------------------------------------------------

    def claim_next(self, run_id_for: Callable[[Entry], str], max_gpus: int | None = None) -> Entry | None:
        """Claim the first waiting entry (that fits ``max_gpus``) and record its run id.

        ``run_id_for(entry)`` names the run directory-to-be; it is recorded in
        the same transaction as the claim, before the directory is made, so a
        runner that dies next leaves an entry whose start the next one finishes.
        """
        with self._transaction() as db:
            for row in db.execute("SELECT * FROM entries WHERE state = 'queued' ORDER BY position, id"):
                entry = Entry.from_row(row)
                if max_gpus is not None and entry.gpus > max_gpus:
                    continue  # a wide entry waits; a narrower one behind it may start now
                run_id = run_id_for(entry)
                db.execute(
                    "UPDATE entries SET state = 'claimed', run_id = ?, claimed = ? WHERE id = ?",
                    (run_id, time.time(), entry.id),
                )
                return self._get(db, entry.id)
        return None

    def mark(self, entry_id: int, state: str, outcome: str | None = None, note: str | None = None) -> None:
        """Move an entry to ``state`` (``launched`` or ``ended``) and say why."""
        if state not in STATES:
            raise ValueError(f"unknown queue state {state!r}")
        with self._transaction() as db:
            db.execute(
                "UPDATE entries SET state = ?, outcome = COALESCE(?, outcome), note = COALESCE(?, note),"
                " ended = CASE WHEN ? = 'ended' THEN ? ELSE ended END WHERE id = ?",
                (state, outcome, note, state, time.time(), entry_id),
            )

    def set_devices(self, entry_id: int, devices: list[int]) -> None:
        with self._transaction() as db:
            db.execute("UPDATE entries SET devices = ? WHERE id = ?", (",".join(map(str, devices)), entry_id))

    def add_sweep(self, name: str, storage: str | None) -> None:
        """Have this home's runner work the sweep ``name`` (its study lives in ``storage``)."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO sweeps (name, storage, added) VALUES (?, ?, ?)", (name, storage, time.time())
            )

    def sweeps(self) -> list[tuple[str, str | None]]:
        return [(row["name"], row["storage"]) for row in self._db.execute("SELECT * FROM sweeps ORDER BY added")]

    def sweep_storage(self, name: str) -> str | None:
        row = self._db.execute("SELECT storage FROM sweeps WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise ConfigError(f"no sweep named {name!r} in this queue (see `convdeck queue`)")
        return row["storage"]

    def started(self) -> list[Entry]:
        """Entries a runner claimed or launched and has not seen end: the ones to adopt."""
        return [e for e in self.entries() if e.state in (CLAIMED, LAUNCHED)]

    # -- plumbing ---------------------------------------------------------------------

    @staticmethod
    def _get(db: sqlite3.Connection, entry_id: int) -> Entry:
        row = db.execute("SELECT * FROM entries WHERE id = ?", (entry_id,)).fetchone()
        if row is None:
            raise ConfigError(f"no queue entry {entry_id} (see `convdeck queue`)")
        return Entry.from_row(row)

    def _set(self, key: str, value: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, value))

    def _setting(self, key: str, default: str) -> str:
        row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default
