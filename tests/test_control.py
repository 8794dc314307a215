"""engine.run.control: the command flags, and control.sock served to a real client."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import event_dicts, run_cli, wait_for

from engine.remedies import REMEDIES
from engine.run import control
from engine.run.control import ControlServer, ControlState, short_socket_path

# -- ControlState --------------------------------------------------------------


def test_pause_and_resume():
    state = ControlState()
    assert state.request("pause") == {"ok": True, "command": "pause"}
    assert state.paused
    assert state.request("resume") == {"ok": True, "command": "resume"}
    assert not state.paused


def test_stop():
    state = ControlState()
    assert state.request("stop")["ok"]
    assert state.stop_requested


def test_checkpoint_request_is_taken_once():
    state = ControlState()
    assert not state.take_checkpoint_request()
    assert state.request("checkpoint")["ok"]
    assert state.take_checkpoint_request()
    assert not state.take_checkpoint_request()


@pytest.mark.parametrize("name", REMEDIES)
def test_valid_remedy_is_taken_once(name):
    state = ControlState()
    assert state.request("remedy", name) == {"ok": True, "command": "remedy", "name": name}
    assert state.take_remedy() == name
    assert state.take_remedy() is None


def test_a_remedy_that_does_not_apply_is_refused_and_the_run_goes_on():
    state = ControlState()
    state.remedy_blocker = lambda name: "mixed precision is already on" if name == "mixed-precision" else None
    reply = state.request("remedy", "mixed-precision")
    assert reply == {"ok": False, "error": "remedy 'mixed-precision' refused: mixed precision is already on"}
    assert state.take_remedy() is None
    assert state.request("remedy", "halve-batch")["ok"] and state.take_remedy() == "halve-batch"


@pytest.mark.parametrize("name", [None, "", "halve", "double-batch"])
def test_invalid_remedy_is_refused(name):
    state = ControlState()
    reply = state.request("remedy", name)
    assert reply["ok"] is False
    assert (repr(name) if name is not None else "missing") in reply["error"]
    assert all(remedy in reply["error"] for remedy in REMEDIES)
    assert state.take_remedy() is None


def test_status_reports_state_and_pause():
    state = ControlState()
    assert state.request("status") == {"ok": True, "state": "starting", "paused": False}
    state.status = {"state": "running", "step": 12, "epoch": 1}
    state.request("pause")
    assert state.request("status") == {
        "ok": True,
        "state": "running",
        "step": 12,
        "epoch": 1,
        "paused": True,
    }


def test_unknown_command_is_refused_and_changes_nothing():
    state = ControlState()
    reply = state.request("explode")
    assert reply["ok"] is False
    assert "'explode'" in reply["error"]
    assert "pause" in reply["error"] and "remedy" in reply["error"]
    assert not (state.paused or state.stop_requested or state.checkpoint_requested)


def test_wait_while_paused_wakes_on_a_command():
    state = ControlState()
    state.request("pause")
    threading.Timer(0.05, state.request, args=("resume",)).start()
    began = time.monotonic()
    state.wait_while_paused(timeout=5.0)
    assert time.monotonic() - began < 2.0
    assert not state.paused


def test_wait_while_paused_returns_at_once_when_running():
    state = ControlState()
    began = time.monotonic()
    state.wait_while_paused(timeout=5.0)
    assert time.monotonic() - began < 1.0


# -- ControlServer ---------------------------------------------------------------


def echo_handler(request: dict) -> dict:
    if request["command"] == "boom":
        raise RuntimeError("handler broke")
    return {"ok": True, "echo": request}


@pytest.fixture
def serve() -> Iterator:
    servers: list[ControlServer] = []

    def start(path: Path, handle=echo_handler) -> ControlServer:
        server = ControlServer(path, handle)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


class Client:
    """A line-at-a-time client on one connection, as engine.run.client speaks."""

    def __init__(self, path: Path) -> None:
        address, dir_fd = short_socket_path(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5.0)
        try:
            self.sock.connect(address)
        finally:
            if dir_fd is not None:
                os.close(dir_fd)
        self.reader = self.sock.makefile("rb")

    def send_line(self, raw: bytes) -> dict:
        try:
            self.sock.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused at once and closed: the refusal is still to be read, as the real client does
        return json.loads(self.reader.readline())

    def send(self, request: dict) -> dict:
        return self.send_line((json.dumps(request) + "\n").encode())

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture
def connect() -> Iterator:
    clients: list[Client] = []

    def make(path: Path) -> Client:
        client = Client(path)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_socket_is_private(tmp_path, serve):
    path = tmp_path / "control.sock"
    serve(path)
    mode = path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def test_several_commands_on_one_connection_get_one_reply_each(tmp_path, serve, connect):
    path = tmp_path / "control.sock"
    serve(path)
    client = connect(path)
    for command in ("status", "pause", "resume"):
        assert client.send({"command": command}) == {"ok": True, "echo": {"command": command}}
    reply = client.send({"command": "remedy", "name": "halve-batch"})
    assert reply["echo"] == {"command": "remedy", "name": "halve-batch"}


def test_requests_sent_together_are_answered_in_order(tmp_path, serve, connect):
    path = tmp_path / "control.sock"
    serve(path)
    client = connect(path)
    client.sock.sendall(b'{"command": "pause"}\n\n{"command": "resume"}\n')
    first = json.loads(client.reader.readline())
    second = json.loads(client.reader.readline())
    assert [first["echo"]["command"], second["echo"]["command"]] == ["pause", "resume"]


def test_server_drives_a_control_state(tmp_path, serve, connect):
    state = ControlState()
    path = tmp_path / "control.sock"
    serve(path, lambda request: state.request(request["command"], request.get("name")))
    client = connect(path)
    assert client.send({"command": "pause"})["ok"]
    assert state.paused
    assert client.send({"command": "remedy", "name": "resnet18"})["ok"]
    assert state.take_remedy() == "resnet18"
    assert client.send({"command": "status"})["paused"] is True


@pytest.mark.parametrize(
    "raw",
    [b"{not json\n", b"[1, 2]\n", b'{"cmd": "pause"}\n', b'{"command": 3}\n', b"\xff\xfe\n"],
)
def test_malformed_request_gets_ok_false_and_the_server_keeps_serving(
    tmp_path, serve, connect, raw
):
    path = tmp_path / "control.sock"
    serve(path)
    client = connect(path)
    reply = client.send_line(raw)
    assert reply["ok"] is False
    assert "malformed request" in reply["error"]
    # Same connection, and a new one, both still served.
    assert client.send({"command": "status"})["ok"]
    assert connect(path).send({"command": "status"})["ok"]


def test_handler_that_raises_gets_ok_false(tmp_path, serve, connect, caplog):
    path = tmp_path / "control.sock"
    serve(path)
    client = connect(path)
    with caplog.at_level(logging.ERROR, logger="convdeck.control"):
        reply = client.send({"command": "boom"})
    assert reply == {"ok": False, "error": "RuntimeError: handler broke"}
    assert client.send({"command": "status"})["ok"]
    assert any("boom" in record.getMessage() for record in caplog.records)


def test_several_clients_at_once(tmp_path, serve, connect):
    path = tmp_path / "control.sock"
    serve(path)
    first, second = connect(path), connect(path)
    assert second.send({"command": "pause"})["ok"]
    assert first.send({"command": "resume"})["ok"]


def test_start_replaces_an_old_socket_file(tmp_path, serve, connect):
    path = tmp_path / "control.sock"
    path.write_text("left over by a killed worker")
    serve(path)
    assert connect(path).send({"command": "status"})["ok"]


def test_close_removes_the_socket(tmp_path, serve):
    path = tmp_path / "control.sock"
    server = serve(path)
    server.close()
    assert not path.exists()
    with pytest.raises(OSError):
        Client(path)
    server.close()  # twice is harmless


def test_close_ends_the_accept_thread(tmp_path):
    # This server's own thread: counting threads by name races with earlier tests' servers.
    server = ControlServer(tmp_path / "control.sock", echo_handler)
    server.start()
    assert server.accept_thread.is_alive()
    client = Client(tmp_path / "control.sock")
    assert client.send({"command": "status"})["ok"]
    client.close()
    time.sleep(0.05)  # the accept thread is now blocked in accept() again
    server.close()
    server.accept_thread.join(1.0)
    assert not server.accept_thread.is_alive()


def test_long_socket_path_still_works(tmp_path, serve, connect):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / "control.sock"
    assert len(os.fsencode(path)) > 108
    serve(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert connect(path).send({"command": "status"})["ok"]


def test_socket_path_long_in_bytes_but_not_in_characters(tmp_path, serve, connect):
    # sockaddr_un counts bytes: a path of few but multi-byte characters overflows it.
    fixed = len(str(tmp_path)) + len("/") + len("/control.sock")
    if fixed > 90:
        pytest.skip("tmp_path too long to build a path short in characters")
    deep = tmp_path / ("\u20ac" * (100 - fixed))  # the euro sign: 3 bytes in UTF-8
    deep.mkdir()
    path = deep / "control.sock"
    assert len(str(path)) <= 100 and len(os.fsencode(path)) > 108
    serve(path)
    assert connect(path).send({"command": "status"})["ok"]


def test_short_socket_path_keeps_short_paths(tmp_path):
    address, dir_fd = short_socket_path("/tmp/x/control.sock")
    assert (address, dir_fd) == ("/tmp/x/control.sock", None)


def test_short_socket_path_goes_through_the_directory_fd(tmp_path):
    deep = tmp_path / ("d" * 120)
    deep.mkdir()
    address, dir_fd = short_socket_path(deep / "control.sock")
    try:
        assert address == f"/proc/self/fd/{dir_fd}/control.sock"
        assert len(address) < 108
        assert os.path.samefile(f"/proc/self/fd/{dir_fd}", deep)
    finally:
        os.close(dir_fd)


def test_peer_of_another_user_is_refused_and_logged(tmp_path, serve, connect, monkeypatch, caplog):
    calls = []

    def handler(request: dict) -> dict:
        calls.append(request)
        return {"ok": True}

    other_uid = os.getuid() + 1
    monkeypatch.setattr(control, "peer_uid", lambda conn: other_uid)
    path = tmp_path / "control.sock"
    serve(path, handler)
    client = connect(path)
    with caplog.at_level(logging.WARNING, logger="convdeck.control"):
        reply = client.send({"command": "stop"})
    assert reply["ok"] is False
    assert "refused" in reply["error"]
    assert calls == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(other_uid) in r.getMessage() for r in warnings)
    # The connection is closed after the refusal (a reset, as our line went unread).
    try:
        rest = client.reader.readline()
    except ConnectionResetError:
        rest = b""
    assert rest == b""


def test_peer_uid_of_a_real_connection_is_ours():
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        assert control.peer_uid(left) == os.getuid()


def test_close_waits_for_a_reply_already_being_made(tmp_path, connect, monkeypatch):
    # A remedy lets the worker's main thread restart the process at once: the
    # reply must be on its way before the server is gone.
    taken = threading.Event()
    order: list[str] = []
    real_send = control._send

    def slow_handler(request: dict) -> dict:
        taken.set()
        time.sleep(0.3)
        return {"ok": True}

    def recording_send(conn, reply):
        real_send(conn, reply)
        order.append("replied")

    monkeypatch.setattr(control, "_send", recording_send)
    path = tmp_path / "control.sock"
    server = ControlServer(path, slow_handler)
    server.start()
    client = connect(path)
    replies: list[dict] = []
    asking = threading.Thread(target=lambda: replies.append(client.send({"command": "remedy"})))
    asking.start()
    assert taken.wait(5.0)
    server.close()
    order.append("closed")
    asking.join(5.0)
    assert order == ["replied", "closed"] and replies == [{"ok": True}]


# -- bad input on the socket: bounded, answered, and the run goes on --------------------------

MAX = control.MAX_REQUEST_BYTES


def send_flooding(client: Client, raw: bytes) -> dict:
    """Send ``raw`` from a thread (the server may hang up before taking it all) and read the reply."""

    def flood() -> None:
        try:
            client.sock.sendall(raw)
        except OSError:  # the server answered and hung up mid-send: as it should
            pass

    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    reply = json.loads(client.reader.readline())
    sender.join(10)
    return reply


def deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth + b"\n"


def test_a_request_of_exactly_the_cap_is_served(tmp_path, serve, connect):
    path = tmp_path / "control.sock"
    serve(path)
    line = json.dumps({"command": "status"}).encode()
    padded = line[:-1] + b" " * (MAX - len(line) - 1) + b"}\n"  # JSON allows the spaces
    assert len(padded) == MAX
    assert connect(path).send_line(padded)["ok"] is True


@pytest.mark.parametrize("size", [MAX + 1, 8 << 20])
def test_an_over_long_line_is_answered_and_never_handled(tmp_path, serve, connect, size):
    path = tmp_path / "control.sock"
    handled: list[dict] = []
    serve(path, lambda request: handled.append(request) or {"ok": True})
    # A real command, but longer than the cap: refused whole, not cut and obeyed.
    raw = b'{"command": "stop", "pad": "' + b"x" * size + b'"}\n'

    reply = send_flooding(connect(path), raw)

    assert reply["ok"] is False and f"longer than {MAX} bytes" in reply["error"]
    assert handled == []
    assert connect(path).send({"command": "status"})["ok"] is True


def test_json_nested_too_deeply_gets_an_error_reply(tmp_path, serve, connect):
    path = tmp_path / "control.sock"
    serve(path)
    client = connect(path)
    assert len(deep(30_000)) < MAX
    reply = client.send_line(deep(30_000))
    assert reply == {"ok": False, "error": "malformed request: nested too deeply"}
    assert client.send({"command": "status"})["ok"] is True  # the same connection goes on


def test_a_live_worker_trains_on_through_bad_requests(convdeck_home, fake_worker):
    fake_worker("serve")
    result = run_cli("run", "--detach")
    assert result.returncode == 0, result.stderr
    run_dir = convdeck_home / "runs" / result.stdout.split()[-1]
    socket_path = run_dir / "control.sock"
    assert wait_for(socket_path.exists, 10)

    def steps() -> int:
        return sum(1 for e in event_dicts(run_dir / "events.jsonl") if e["type"] == "step")

    bad = [
        (b"x" * (200 << 20), f"longer than {MAX} bytes"),  # 200 MB, no newline
        (deep(100_000), f"longer than {MAX} bytes"),
        (deep(30_000), "nested too deeply"),
        (b"{not json\n", "malformed request"),
        (b"\xff\xfe\x00\n", "malformed request"),
    ]
    for raw, expected in bad:
        client = Client(socket_path)
        try:
            reply = send_flooding(client, raw)
        finally:
            client.close()
        assert reply["ok"] is False and expected in reply["error"], (raw[:20], reply)
        seen = steps()
        assert wait_for(lambda seen=seen: steps() > seen, 10), "the worker stopped training"

    status = json.loads(run_cli("ctl", run_dir.name, "status").stdout)
    assert status["ok"] is True and status["state"] == "running"
    assert run_cli("ctl", run_dir.name, "stop").returncode == 0
