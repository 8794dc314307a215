"""End to end in tmux, as a person would use it: the real app, the real worker, TensorFlow.

Launch ``convdeck`` in a detached 120x36 tmux session, set the epochs in the
config pane, press Enter (lenet5-digits on the embedded digits), watch the
step counter and the chart move, kill the terminal, see with ``convdeck
runs`` that the run goes on, then ``convdeck attach`` in a new session and
see it again. Each tmux call uses a server of its own (``tmux -L``), so a
person's tmux sessions are never touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tui.widgets.header import SHOWN_PHASES

# About 15 s (TensorFlow's import is most of it; 35 s on a machine busy with other
# suites): not marked slow.
pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

CONVDECK = Path(sys.executable).with_name("convdeck")
STEP = re.compile(r"\bstep ([\d,]+)")
KEY_PAUSE = 0.15
"""Seconds between keys: tmux delivers a burst of keys in one read, which Textual may drop."""


class Tmux:
    """One private tmux server (``tmux -L NAME``) holding the sessions of a test."""

    def __init__(self, name: str, home: Path) -> None:
        self.name, self.home = name, home

    def run(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.name, *args], capture_output=True, text=True, timeout=30
        )
        return result.stdout

    def launch(self, session: str, *command: str, size: tuple[int, int] = (120, 36)) -> None:
        """A detached session running ``command`` with this test's CONVDECK_HOME."""
        line = " ".join(command)
        # pytest plugins export COLUMNS/LINES; a real terminal's size must win.
        env = f"env -u COLUMNS -u LINES CONVDECK_HOME={self.home} TF_CPP_MIN_LOG_LEVEL=2"
        shell = f"{env} {line}; sleep 600"
        self.run("new-session", "-d", "-s", session, "-x", str(size[0]), "-y", str(size[1]), shell)

    def screen(self, session: str) -> str:
        return self.run("capture-pane", "-p", "-t", session)

    def keys(self, session: str, *keys: str) -> None:
        for key in keys:
            self.run("send-keys", "-t", session, key)
            time.sleep(KEY_PAUSE)

    def wait_for(self, session: str, found, timeout: float, what: str) -> str:
        """Poll the screen until ``found(screen)`` is true; fail with the last screen."""
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen(session)
            if found(screen):
                return screen
            time.sleep(0.25)
        size = self.run("display", "-p", "-t", session, "#{window_width}x#{window_height}").strip()
        raise AssertionError(
            f"{what}: not on screen within {timeout:g} s; the screen ({size}):\n{screen}"
        )

    def kill_server(self) -> None:
        subprocess.run(["tmux", "-L", self.name, "kill-server"], capture_output=True, timeout=30)


def header_step(screen: str) -> int | None:
    """The step counter of the header line (the screen's first line)."""
    match = STEP.search(screen.splitlines()[0] if screen else "")
    return int(match.group(1).replace(",", "")) if match else None


def convdeck(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CONVDECK), *args], capture_output=True, text=True, timeout=120, env=os.environ
    )


def live_runs() -> list[dict]:
    runs = json.loads(convdeck("runs", "--json").stdout or "[]")
    return [run for run in runs if run.get("status") in ("running", "paused", "waiting")]


@pytest.fixture
def tmux(convdeck_home: Path):
    server = Tmux(f"convdeck-test-{os.getpid()}", convdeck_home)
    yield server
    server.kill_server()
    for run in live_runs():  # never leave a worker training after the test
        convdeck("ctl", run["run_id"], "stop")


def assert_live_header(screen: str) -> None:
    """The header names a training run: ``running``, or the phase it shows instead (``validating``...)."""
    words = ("running", *SHOWN_PHASES)
    header = screen.splitlines()[0]
    assert any(word in header for word in words), f"no word of {words} in the header: {header!r}"


def test_train_kill_the_terminal_and_attach_again(tmux: Tmux, convdeck_home: Path) -> None:
    assert CONVDECK.exists(), f"the console script is not installed next to {sys.executable}"
    tmux.launch("first", str(CONVDECK))
    tmux.wait_for(
        "first",
        lambda s: "lenet5-digits" in s and "epochs" in s and "Start" in s,
        30,
        "the preset list with lenet5-digits highlighted and its config",
    )

    # Enough epochs that it still trains after the terminal is gone: Tab to the
    # epochs field (batch size, learning rate, epochs; focus selects its text),
    # type 40 over it, Enter starts.
    tmux.keys("first", "Tab", "Tab", "Tab", "4", "0")
    tmux.wait_for("first", lambda s: re.search(r"epochs\s+40\b", s), 10, "epochs set to 40")
    tmux.keys("first", "Enter")

    first = tmux.wait_for(
        "first",
        lambda s: (header_step(s) or 0) > 0,
        120,  # the worker imports TensorFlow first
        "the run's first steps",
    )
    assert_live_header(first)
    moved = tmux.wait_for(
        "first",
        lambda s: (header_step(s) or 0) > header_step(first) and "loss" in s,
        60,
        "the step counter moving, and the loss chart",
    )
    assert "x: step" in moved  # the chart's legend

    # The terminal goes away (as when an ssh link drops): the run does not.
    tmux.run("kill-session", "-t", "first")
    time.sleep(1.0)
    runs = live_runs()
    assert len(runs) == 1, f"expected one live run, `convdeck runs` says: {runs}"
    run_id = runs[0]["run_id"]
    assert runs[0]["status"] == "running"

    tmux.launch("second", str(CONVDECK), "attach")
    again = tmux.wait_for(
        "second",
        lambda s: run_id in s.splitlines()[0] and (header_step(s) or 0) > header_step(moved),
        60,
        "the same run, still training, after `convdeck attach`",
    )
    assert_live_header(again)
    tmux.wait_for("second", lambda s: "x: step" in s, 30, "the chart of the attached run")
