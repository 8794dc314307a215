"""A quick answer to "can this machine download anything?", bounded in time.

TFDS retries a failed download with backoff for minutes (about 200 s for
MNIST with no network), so a loader asks this first and explains at once.
"""

from __future__ import annotations

import socket
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Optional

# Where TFDS fetches prepared datasets and most source files from.
DOWNLOAD_HOST = ("storage.googleapis.com", 443)
PROBE_SECONDS = 3.0


@dataclass(frozen=True)
class Reachability:
    """What one probe found: ``reason`` is None when the host answered."""

    reason: Optional[str] = None
    # No answer in time, which a slow link can give too; an error is a definite no.
    timed_out: bool = False


def probe(timeout: float = PROBE_SECONDS) -> Reachability:
    """Try to connect to the download host (or the HTTPS proxy) within ``timeout`` seconds."""
    host, port = proxy_address() or DOWNLOAD_HOST
    outcome: dict[str, str] = {}

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome["reached"] = "yes"
        except TimeoutError:
            outcome["timeout"] = "yes"
        except OSError as error:
            outcome["error"] = f"cannot reach {host}:{port}: {error}"

    # A thread bounds the DNS lookup too, which the socket timeout does not cover.
    prober = threading.Thread(target=connect, name="network-probe", daemon=True)
    prober.start()
    prober.join(timeout)
    if "reached" in outcome:
        return Reachability()
    if "error" in outcome:
        return Reachability(outcome["error"])
    return Reachability(f"no answer from {host}:{port} within {timeout:g} s", timed_out=True)


def unreachable_reason(timeout: float = PROBE_SECONDS) -> Optional[str]:
    """None when the download host (or the HTTPS proxy) answers; else why not, in a few words."""
    return probe(timeout).reason


def proxy_address() -> Optional[tuple[str, int]]:
    """The HTTPS proxy from the environment, which downloads would go through."""
    proxy = urllib.request.getproxies().get("https")
    if not proxy:
        return None
    parsed = urllib.parse.urlsplit(proxy if "//" in proxy else f"//{proxy}")
    if not parsed.hostname:
        return None
    return parsed.hostname, parsed.port or (80 if parsed.scheme == "http" else 443)
