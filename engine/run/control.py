"""The worker's side of control.sock: a Unix socket that takes commands.

Commands arrive as one JSON object a line and each gets a one-line JSON
reply. A line is at most :data:`MAX_REQUEST_BYTES`: whatever a peer sends,
the worker never holds more of it than that, and anything that is not a
request (too long, not JSON, nested past any request's depth) gets an
error reply while training goes on. Only the run's owner may steer it: the
directory is 0700, the socket 0600, and each connection's peer credentials
are checked, because file modes alone do not hold on every filesystem.
TF-free: the trainer polls the shared ``ControlState`` between steps, so no
command ever touches TensorFlow from the socket thread.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path

from engine.remedies import REMEDIES, unknown_remedy

log = logging.getLogger("convdeck.control")

MAX_REQUEST_BYTES = 64 * 1024
"""The longest request line the socket takes, its newline included; a real one is under 100 bytes."""
COMMANDS = ("pause", "resume", "stop", "checkpoint", "remedy", "status", "stacks", "eval")
STOP_REASONS = ("stopped", "pruned")
"""Why a ``stop`` ends a run: a person's request, or a sweep's pruner (``stop`` with name ``pruned``)."""


class ControlState:
    """Flags the socket thread sets and the training loop reads between steps."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self.paused = False
        self.stop_requested = False
        self.stop_reason = "stopped"
        self.checkpoint_requested = False
        self.eval_requested = False
        self.remedy: str | None = None
        self.waiting_for_remedy = False
        self.status: dict = {"state": "starting"}
        self.remedy_blocker: Callable[[str], str | None] = lambda name: None
        """Why a remedy cannot be taken now (the worker sets it: not while starting, not one
        that does not apply to the config it trains), or None."""

    def request(self, command: str, name: str | None = None) -> dict:
        """Apply one command; returns the reply (``ok`` and a message or error)."""
        with self._wake:
            reply = self._apply(command, name)
            self._wake.notify_all()
            return reply

    def _apply(self, command: str, name: str | None) -> dict:
        if command == "status":
            return {"ok": True, **self.status, "paused": self.paused}
        if command == "pause":
            self.paused = True
        elif command == "resume":
            self.paused = False
        elif command == "stop":
            if name is not None and name not in STOP_REASONS:
                return {"ok": False, "error": f"stop {name!r}: expected no reason or one of {', '.join(STOP_REASONS)}"}
            self.stop_requested = True
            self.stop_reason = name or "stopped"
        elif command == "eval":
            self.eval_requested = True
        elif command == "checkpoint":
            self.checkpoint_requested = True
        elif command == "remedy":
            if name not in REMEDIES:
                return {"ok": False, "error": unknown_remedy(name)}
            why_not = self.remedy_blocker(name)
            if why_not:  # refused here: asked for, it would end the run instead of changing it
                return {"ok": False, "error": f"remedy {name!r} refused: {why_not}"}
            self.remedy = name
        else:
            return {"ok": False, "error": f"unknown command {command!r}; expected one of {', '.join(COMMANDS)}"}
        return {"ok": True, "command": command, **({"name": name} if name else {})}

    def wait_while_paused(self, timeout: float = 0.5) -> None:
        """Block the training loop while paused, waking on any command."""
        with self._wake:
            if (self.paused or self.waiting_for_remedy) and not self.stop_requested:
                self._wake.wait(timeout)

    def take_checkpoint_request(self) -> bool:
        with self._lock:
            asked, self.checkpoint_requested = self.checkpoint_requested, False
            return asked

    def take_eval_request(self) -> bool:
        with self._lock:
            asked, self.eval_requested = self.eval_requested, False
            return asked

    def take_remedy(self) -> str | None:
        with self._lock:
            remedy, self.remedy = self.remedy, None
            return remedy


def peer_uid(conn: socket.socket) -> int | None:
    """The user id of the process at the other end (Linux SO_PEERCRED)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


# sockaddr_un holds 108 bytes; deep test or home directories can exceed it.
_MAX_SOCKET_PATH = 100


def short_socket_path(path: str | os.PathLike) -> tuple[str, int | None]:
    """A path to bind or connect that fits sockaddr_un, and a directory fd to close after.

    Long paths go through ``/proc/self/fd/N/`` of the socket's directory, which
    Linux resolves for both ``bind`` and ``connect``.
    """
    path = Path(path)
    if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
        return str(path), None
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    return f"/proc/self/fd/{fd}/{path.name}", fd


REPLY_GRACE_SECONDS = 2.0
"""How long closing the server waits for replies to requests it already took."""


class ControlServer:
    """Serves control.sock on a daemon thread, one thread per connection.

    Start it only while holding the run's lock (:func:`engine.run.store.claim_run`):
    a socket left at ``path`` can then only be a dead worker's, and is replaced.
    ``start`` still connects to it first and refuses to remove one that answers,
    so a broken ordering shows as an error, never as a live worker cut off.

    Args:
        path: the socket path (a stale socket file there is replaced).
        handle: turns a request dict into a reply dict.
    """

    def __init__(self, path: str | os.PathLike, handle: Callable[[dict], dict]) -> None:
        self.path = Path(path)
        self.handle = handle
        self._sock: socket.socket | None = None
        self._in_flight = 0
        self._replied = threading.Condition()
        self.accept_thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve; a stale socket at the path is removed, a live one never.

        Raises:
            SocketInUse: a process listens on the path (another worker serves this run).
        """
        _remove_stale_socket(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address, dir_fd = short_socket_path(self.path)
        old_umask = os.umask(0o177)  # the socket is born 0600, no window at a wider mode
        try:
            sock.bind(address)
        finally:
            os.umask(old_umask)
            if dir_fd is not None:
                os.close(dir_fd)
        os.chmod(self.path, 0o600)
        sock.listen(8)
        self._sock = sock
        self.accept_thread = threading.Thread(target=self._accept_loop, name="control-accept", daemon=True)
        self.accept_thread.start()

    def close(self, grace: float = REPLY_GRACE_SECONDS) -> None:
        """Stop serving; a request already taken still gets its reply (within ``grace``).

        A command such as ``remedy`` lets the main thread go on at once, to a
        restart that replaces the process: without the wait, the reply being
        written would die with it and the viewer would hear nothing.
        """
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            except OSError:
                pass
            self._sock.close()
            self._sock = None
        self.path.unlink(missing_ok=True)
        with self._replied:
            self._replied.wait_for(lambda: self._in_flight == 0, timeout=grace)

    def _accept_loop(self) -> None:
        while self._sock is not None:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            uid = peer_uid(conn)
            if uid is not None and uid != os.getuid():
                log.warning("refused a control connection from uid %s (owner is %s)", uid, os.getuid())
                _send(conn, {"ok": False, "error": "refused: this run belongs to another user"})
                return
            while line := reader.readline(MAX_REQUEST_BYTES):
                if not line.endswith(b"\n") and len(line) == MAX_REQUEST_BYTES:
                    # Where this request ends, and so where the next begins, is unknown
                    # without reading on: answer and hang up instead.
                    _send(conn, _too_long())
                    return
                if line.strip():
                    self._answer(conn, line)

    def _answer(self, conn: socket.socket, line: bytes) -> None:
        with self._replied:
            self._in_flight += 1
        try:
            _send(conn, self._reply_to(line))
        finally:
            with self._replied:
                self._in_flight -= 1
                self._replied.notify_all()

    def _reply_to(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("command"), str):
                raise ValueError("expected an object with a 'command' string")
        except ValueError as error:
            return {"ok": False, "error": f"malformed request: {error}"}
        except RecursionError:  # e.g. 60,000 nested brackets: no request is nested at all
            return {"ok": False, "error": "malformed request: nested too deeply"}
        try:
            return self.handle(request)
        except Exception as error:  # a bad command must never kill the run
            log.exception("control command %r failed", request)
            return {"ok": False, "error": f"{type(error).__name__}: {error}"}


class SocketInUse(RuntimeError):
    """The control socket's path is served by a live process: it is not ours to remove."""


def _remove_stale_socket(path: Path) -> None:
    """Unlink ``path`` unless a process listens on it (then raise :class:`SocketInUse`)."""
    if not path.exists():
        return
    address, dir_fd = short_socket_path(path)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            probe.connect(address)
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # nobody listens: a dead worker's leftover
        return
    except OSError:
        # A socket that neither accepts nor refuses (full backlog of a wedged worker), or
        # not a socket at all: it is not known to be stale, so it stays.
        raise SocketInUse(f"{path} exists and is not a stale socket; not removing it") from None
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    raise SocketInUse(f"{path} is served by a live process; not removing it")


def _too_long() -> dict:
    return {
        "ok": False,
        "error": f"malformed request: longer than {MAX_REQUEST_BYTES} bytes without a newline; "
        "a request is one JSON object on one line",
    }


def _send(conn: socket.socket, reply: dict) -> None:
    try:
        conn.sendall((json.dumps(reply, default=str) + "\n").encode())
    except OSError:
        pass  # the viewer went away; nothing to tell
