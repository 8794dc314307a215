"""Devices and tf.distribute strategies from the train section of a config.

Device settings (logical CPUs for tests, GPU memory growth) must be made
before TensorFlow's runtime starts, so the worker calls ``configure_devices``
before it loads data or builds a model. ``train.batch_size`` is the global
batch: each replica gets ``batch_size / replicas``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import tensorflow as tf

from engine.config import ConfigError, TrainConfig


@dataclass
class StrategyInfo:
    """The strategy in use, as the ``run_started`` event and the header show it."""

    strategy: tf.distribute.Strategy
    name: str
    replicas: int
    devices: list[str]
    is_chief: bool = True
    worker_index: int = 0


def configure_devices(train: TrainConfig) -> None:
    """Split the CPU into logical devices and let GPU memory grow; call before any TF op."""
    try:
        for gpu in tf.config.list_physical_devices("GPU"):
            # Growth keeps a second run or the estimate from finding the card pre-filled.
            tf.config.experimental.set_memory_growth(gpu, True)
        if train.virtual_cpus:
            cpu = tf.config.list_physical_devices("CPU")[0]
            logical = [tf.config.LogicalDeviceConfiguration()] * train.virtual_cpus
            tf.config.set_logical_device_configuration(cpu, logical)
    except RuntimeError:
        pass  # already initialised in this process (tests that build twice); keep what is set


def make_strategy(train: TrainConfig) -> StrategyInfo:
    """The strategy ``train.strategy`` asks for; ConfigError for devices that are not there."""
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    name = train.strategy
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 or (train.virtual_cpus > 1 and not gpus) else "one_device"
    if name == "one_device":
        device = train.devices[0] if train.devices else (gpus or cpus)[0]
        _check_devices([device], gpus + cpus)
        return _info(tf.distribute.OneDeviceStrategy(device), "one_device")
    if name == "mirrored":
        devices = train.devices or gpus or cpus
        _check_devices(devices, gpus + cpus)
        return _info(tf.distribute.MirroredStrategy(devices), "mirrored")
    return _multi_worker()


def _check_devices(wanted: list[str], present: list[str]) -> None:
    known = {_short(d) for d in present}
    for device in wanted:
        if _short(device) not in known:
            raise ConfigError(
                f"train.devices: {device!r} is not on this machine; present: "
                f"{', '.join(sorted(known)) or 'none'}"
            )


def _short(device: str) -> str:
    """'/job:localhost/replica:0/task:0/device:GPU:1' and '/gpu:1' both become 'GPU:1'."""
    tail = device.split("device:")[-1].lstrip("/")
    kind, _, index = tail.partition(":")
    return f"{kind.upper()}:{index or 0}"


def _info(strategy: tf.distribute.Strategy, name: str) -> StrategyInfo:
    devices = list(getattr(strategy.extended, "worker_devices", []) or [])
    return StrategyInfo(strategy, name, strategy.num_replicas_in_sync, devices)


def _multi_worker() -> StrategyInfo:
    cluster = read_tf_config()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    task = cluster["task"]
    is_chief = task.get("type") == "chief" or (
        task.get("type") == "worker" and task.get("index", 0) == 0 and "chief" not in cluster["cluster"]
    )
    info = _info(strategy, "multi_worker")
    info.is_chief, info.worker_index = is_chief, int(task.get("index", 0))
    return info


def read_tf_config() -> dict:
    """TF_CONFIG parsed and checked; ConfigError with one line when it is missing or malformed."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ConfigError(
            "train.strategy 'multi_worker' needs TF_CONFIG (or `convdeck run --workers host:port,...`)"
        )
    try:
        config = json.loads(raw)
        workers = config["cluster"]["worker"]
        task = config["task"]
        if not isinstance(workers, list) or not workers or "type" not in task:
            raise ValueError("cluster.worker must be a non-empty list and task must have a type")
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"TF_CONFIG is malformed ({error}); expected "
                          '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}') from None
    return config


def workers_tf_config(workers: str, index: int) -> str:
    """TF_CONFIG for ``--workers host:port,host:port`` and this worker's index."""
    hosts = [w.strip() for w in workers.split(",") if w.strip()]
    for host in hosts:
        name, sep, port = host.rpartition(":")
        if not sep or not name or not port.isdigit():
            raise ConfigError(f"--workers: {host!r} is not host:port (e.g. 10.0.0.2:2222)")
    if not 0 <= index < len(hosts):
        raise ConfigError(f"--worker-index {index} is outside 0..{len(hosts) - 1}")
    return json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}})
