"""tui.launch: a bare ``convdeck`` opens the TUI without the CLI layer; anything else is the CLI."""

import subprocess
import sys

import pytest

from tui import launch


def test_bare_command_opens_the_tui_without_importing_the_cli(monkeypatch):
    opened = []
    monkeypatch.setattr(sys, "argv", ["convdeck"])
    monkeypatch.setattr("tui.app.run_app", lambda: opened.append(True) or 0)
    with pytest.raises(SystemExit) as exit_:
        launch.main()
    assert exit_.value.code == 0 and opened == [True]


def test_a_command_goes_to_the_cli(monkeypatch):
    called = []
    monkeypatch.setattr(sys, "argv", ["convdeck", "presets"])
    monkeypatch.setattr("tui.cli.main", lambda: called.append(sys.argv[1:]))
    launch.main()
    assert called == [["presets"]]


def test_the_tui_path_leaves_click_and_pydantic_unimported():
    code = (
        "import sys, tui.launch, tui.app\n"
        "print(sorted(m for m in ('click', 'pydantic', 'engine.client', 'tensorflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
