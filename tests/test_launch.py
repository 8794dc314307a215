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


def test_attach_opens_the_tui_on_the_run_it_names(monkeypatch, tmp_path):
    from engine.run.store import runs_root

    run_dir = runs_root(tmp_path) / "20261128-101010-lenet5-digits-abcd"
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text('name = "lenet5-digits"\n')
    monkeypatch.setenv("CONVDECK_HOME", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["convdeck", "attach", "20261128-1010"])
    opened = []
    monkeypatch.setattr("tui.app.run_app", lambda attach=None: opened.append(attach) or 0)
    with pytest.raises(SystemExit) as exit_:
        launch.main()
    assert exit_.value.code == 0 and opened == [run_dir.name]


def test_attach_to_a_run_that_is_not_there_is_one_line_and_exit_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CONVDECK_HOME", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["convdeck", "attach", "nope"])
    monkeypatch.setattr("tui.app.run_app", lambda attach=None: pytest.fail("opened the TUI"))
    with pytest.raises(SystemExit) as exit_:
        launch.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("convdeck: no run matches 'nope'")
    assert len(err.strip().splitlines()) == 1


def test_attach_with_an_option_goes_to_the_cli(monkeypatch):
    called = []
    monkeypatch.setattr(sys, "argv", ["convdeck", "attach", "--help"])
    monkeypatch.setattr("tui.cli.main", lambda: called.append(sys.argv[1:]))
    launch.main()
    assert called == [["attach", "--help"]]


def test_the_tui_path_leaves_click_and_pydantic_unimported():
    code = (
        "import sys, tui.launch, tui.app, engine.run.store\n"
        "print(sorted(m for m in ('click', 'pydantic', 'engine.run.client', 'tensorflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
