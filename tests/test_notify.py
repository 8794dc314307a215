"""engine.run.notify: settings, URL checks, and alerts caught by a local HTTP server."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine.errors import ConfigError
from engine.run.notify import Notifier, NotifySettings, check_urls, load_settings
from engine.run.settings import SETTINGS_FILE


class Catcher:
    """A local HTTP server that keeps every JSON body Apprise's json:// posts to it."""

    def __init__(self) -> None:
        self.posts: list[dict] = []
        self.arrived = threading.Event()
        catcher = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length", 0))
                catcher.posts.append(json.loads(self.rfile.read(length)))
                catcher.arrived.set()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def catcher():
    server = Catcher()
    yield server
    server.close()


def test_an_alert_reaches_a_json_webhook(catcher):
    notifier = Notifier(NotifySettings((catcher.url,)))
    notifier.send("finished", "run r1 finished", "val_accuracy 0.98")
    notifier.wait()
    assert catcher.arrived.wait(5)
    post = catcher.posts[0]
    assert post["title"] == "run r1 finished" and "val_accuracy 0.98" in post["message"]
    assert post["type"] == "success"


def test_kinds_left_out_of_on_are_not_sent(catcher):
    notifier = Notifier(NotifySettings((catcher.url,), on=("failed",)))
    assert notifier.send("finished", "t", "b") is None
    notifier.send("failed", "t", "b").join(10)
    assert [p["type"] for p in catcher.posts] == ["failure"]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_server_is_reported_once_and_never_raises():
    failures: list[str] = []
    url = f"json://127.0.0.1:{_closed_port()}/hook"
    notifier = Notifier(NotifySettings((url,)), on_failure=failures.append, timeout=2)
    for _ in range(3):
        notifier.send("crashed", "run crashed", "SIGKILL")
    notifier.wait()
    assert len(failures) == 1 and "crashed alert" in failures[0]


def test_a_url_apprise_cannot_read_is_one_line_at_config_time():
    with pytest.raises(ConfigError, match="Apprise cannot read the URL 'slack:/oops'"):
        check_urls(["slack:/oops"])


def test_settings_come_from_convdeck_toml(tmp_path, catcher):
    (tmp_path / SETTINGS_FILE).write_text(f'[notify]\nurls = ["{catcher.url}"]\non = ["crashed", "hung"]\n')
    settings = load_settings(tmp_path)
    assert settings.urls == (catcher.url,) and settings.wants("hung") and not settings.wants("finished")
    assert load_settings(tmp_path / "nowhere") == NotifySettings()


@pytest.mark.parametrize(
    "text, message",
    [
        ('[notify]\nurls = "nope://"\n', "Apprise cannot read"),
        ('[notify]\nurls = [1]\n', "must be a list of strings"),
        ('[notify]\non = ["finished", "lunch"]\n', "notify.on has 'lunch'"),
    ],
)
def test_bad_settings_are_one_line(tmp_path, text, message):
    (tmp_path / SETTINGS_FILE).write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(tmp_path)
