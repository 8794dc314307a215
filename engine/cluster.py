"""The cluster of a multi-worker run: ``TF_CONFIG`` and ``--workers``, read and checked.

TF-free, so ``convdeck run --workers ...`` finds a malformed cluster in one
line before TensorFlow loads; :mod:`engine.train.strategy` builds the
strategy from what this module returns.
"""

from __future__ import annotations

import json
import os
from typing import Any

from engine.config import ConfigError
from engine.errors import seconds_from_env

# How long a multi-worker run waits for every other worker to be reachable.
WORKER_TIMEOUT_ENV = "CONVDECK_WORKER_TIMEOUT"
DEFAULT_WORKER_TIMEOUT = 300.0
TASK_TYPES = ("chief", "worker")


def cluster_tasks(config: dict) -> list[tuple[str, int]]:
    """(job, index) of every worker, chief first: the order of replicas."""
    cluster = config["cluster"]
    return [(job, i) for job in TASK_TYPES for i in range(len(cluster.get(job) or []))]


def read_tf_config(raw: str | None = None) -> dict:
    """TF_CONFIG parsed and checked; ConfigError with one line when it is missing or malformed.

    Args:
        raw: the JSON text; None reads the ``TF_CONFIG`` environment variable.
    """
    raw = os.environ.get("TF_CONFIG") if raw is None else raw
    if not raw or not raw.strip():
        raise ConfigError(
            "train.strategy 'multi_worker' needs TF_CONFIG (or `convdeck run --workers "
            "host:port,... --worker-index N`)"
        )
    try:
        config = json.loads(raw)
    except ValueError as error:
        raise ConfigError(f"TF_CONFIG is not JSON ({error}); expected {_TF_CONFIG_SHAPE}") from None
    problem = _tf_config_problem(config)
    if problem:
        raise ConfigError(f"TF_CONFIG is malformed: {problem}; expected {_TF_CONFIG_SHAPE}")
    return config


_TF_CONFIG_SHAPE = (
    '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}'
)


def _tf_config_problem(config: Any) -> str | None:
    """What is wrong with a parsed TF_CONFIG for a multi-worker run, or None."""
    if not isinstance(config, dict):
        return "it is not a JSON object"
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict):
        return "no \"cluster\" object"
    if not isinstance(task, dict):
        return "no \"task\" object"
    jobs = {k: v for k, v in cluster.items() if k in TASK_TYPES}
    others = sorted(set(cluster) - set(TASK_TYPES))
    if others:
        return f"cluster job {others[0]!r} is not supported (only chief and worker)"
    for job, hosts in jobs.items():
        if not isinstance(hosts, list) or not hosts:
            return f"cluster.{job} must be a non-empty list of \"host:port\""
        for host in hosts:
            if not isinstance(host, str) or address_problem(host):
                return f"cluster.{job} has {host!r}: {address_problem(str(host)) or 'not a string'}"
    if "worker" not in jobs and "chief" not in jobs:
        return "cluster has no \"worker\" list"
    if len(cluster.get("chief") or []) > 1:
        return "cluster.chief must list one address"
    all_hosts = [h for job in TASK_TYPES for h in cluster.get(job) or []]
    duplicates = sorted({h for h in all_hosts if all_hosts.count(h) > 1})
    if duplicates:
        return f"{duplicates[0]!r} is listed twice"
    kind, index = task.get("type"), task.get("index", 0)
    if kind not in jobs:
        return f"task.type {kind!r} is not one of the cluster's jobs ({', '.join(jobs)})"
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(jobs[kind]):
        return f"task.index {index!r} is outside 0..{len(jobs[kind]) - 1}"
    return None


def address_problem(address: str) -> str | None:
    """Why ``address`` is not host:port, or None."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host:
        return "not host:port (e.g. 10.0.0.2:2222)"
    if not port.isdigit() or not 0 < int(port) < 65536:
        return f"port {port!r} is not a number in 1..65535"
    return None


def cluster_addresses(config: dict) -> tuple[list[str], str, int]:
    """Every worker's address (chief first), this task's type and index."""
    cluster, task = config["cluster"], config["task"]
    addresses = [h.strip() for job in TASK_TYPES for h in cluster.get(job) or []]
    return addresses, task["type"], int(task.get("index", 0))


def workers_tf_config(workers: str, index: int) -> str:
    """TF_CONFIG for ``--workers host:port,host:port`` and this worker's index."""
    hosts = [w.strip() for w in workers.split(",")]
    if not any(hosts):
        raise ConfigError(
            "--workers: expected host:port,host:port,... (e.g. 10.0.0.1:2222,10.0.0.2:2222)"
        )
    for host in hosts:
        if not host:
            raise ConfigError(f"--workers: an empty entry in {workers!r}")
        problem = address_problem(host)
        if problem:
            raise ConfigError(f"--workers: {host!r} is {problem}")
    duplicates = sorted({h for h in hosts if hosts.count(h) > 1})
    if duplicates:
        raise ConfigError(f"--workers: {duplicates[0]!r} is listed twice")
    if not 0 <= index < len(hosts):
        raise ConfigError(
            f"--worker-index {index} is outside 0..{len(hosts) - 1} (one per --workers entry)"
        )
    return json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}})


def worker_timeout() -> float:
    """Seconds to wait for the other workers (``CONVDECK_WORKER_TIMEOUT``, default 300)."""
    return seconds_from_env(WORKER_TIMEOUT_ENV, DEFAULT_WORKER_TIMEOUT)
