"""The import rules: the UI never imports TensorFlow, the engine never imports Textual."""

import subprocess
import sys

UI_CHECK = "import tui.app, sys; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
ENGINE_CHECK = (
    "import sys, engine.gpu, engine.run.history, engine.config, engine.run.events; "
    "assert not [m for m in sys.modules if m.split('.')[0] == 'textual'], 'textual imported'"
)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_tui_app_does_not_import_tensorflow():
    result = _run(UI_CHECK)
    assert result.returncode == 0, result.stderr


def test_engine_modules_of_the_ui_do_not_import_textual():
    result = _run(ENGINE_CHECK)
    assert result.returncode == 0, result.stderr
