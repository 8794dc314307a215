"""A quick answer to "can this machine download anything?", bounded in time.

TFDS retries a failed download with backoff for minutes (about 200 s for
MNIST with no network), so a loader asks this first and explains at once.
"""

from __future__ import annotations

import socket
import threading
import urllib.parse
import urllib.request
from typing import Optional

# Where TFDS fetches prepared datasets and most source files from.
DOWNLOAD_HOST = ("storage.googleapis.com", 443)
PROBE_SECONDS = 3.0


def unreachable_reason(timeout: float = PROBE_SECONDS) -> Optional[str]:
    """None when the download host (or the HTTPS proxy) answers; else why not, in a few words."""
    host, port = proxy_address() or DOWNLOAD_HOST
    outcome: dict[str, str] = {}

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome["reached"] = "yes"
        except OSError as error:
            outcome["error"] = f"cannot reach {host}:{port}: {error}"

    # A thread bounds the DNS lookup too, which the socket timeout does not cover.
    probe = threading.Thread(target=connect, name="network-probe", daemon=True)
    probe.start()
    probe.join(timeout)
    if "reached" in outcome:
        return None
    return outcome.get("error", f"no answer from {host}:{port} within {timeout:g} s")


def proxy_address() -> Optional[tuple[str, int]]:
    """The HTTPS proxy from the environment, which downloads would go through."""
    proxy = urllib.request.getproxies().get("https")
    if not proxy:
        return None
    parsed = urllib.parse.urlsplit(proxy if "//" in proxy else f"//{proxy}")
    if not parsed.hostname:
        return None
    return parsed.hostname, parsed.port or (80 if parsed.scheme == "http" else 443)
