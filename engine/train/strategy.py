"""Devices and tf.distribute strategies from the train section of a config.

``train.strategy`` picks one of TensorFlow's own strategies:

- ``one_device``: one GPU (the first) or the CPU; ``train.devices`` may name it.
- ``mirrored``: MirroredStrategy over ``train.devices``, or every visible GPU.
- ``multi_worker``: MultiWorkerMirroredStrategy over the workers that
  ``TF_CONFIG`` names (``convdeck run --workers host:port,...`` writes it).
- ``auto``: mirrored when there are several GPUs (or ``train.virtual_cpus``
  splits the CPU), else one device.

``train.batch_size`` is the global batch: each replica gets
``batch_size / replicas``. Device settings (logical CPUs for tests, GPU memory
growth) must be made before TensorFlow's runtime starts, so the worker calls
``configure_devices`` before it loads data or builds a model.

Parsing TF_CONFIG and ``--workers`` lives in :mod:`engine.cluster` (TF-free),
so the command line checks a cluster without loading TensorFlow.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.cluster import (  # noqa: F401 (re-exported: the worker and tests read them here)
    DEFAULT_WORKER_TIMEOUT,
    TASK_TYPES,
    WORKER_TIMEOUT_ENV,
    address_problem,
    cluster_addresses,
    cluster_tasks,
    read_tf_config,
    worker_timeout,
    workers_tf_config,
)
from engine.config import ConfigError, TrainConfig

# The cluster a multi-worker run was started in, kept so `convdeck resume` rejoins it.
TF_CONFIG_FILE = "tf_config.json"
# Events a non-chief worker records in its own run directory: enough for
# `convdeck runs`, `resume` and a terminal following it; the chief's run
# directory holds the run's record (steps, epochs, checkpoints).
NON_CHIEF_EVENTS = ("run_started", "log", "nan", "oom", "remedy_applied", "finished", "failed")


@dataclass
class StrategyInfo:
    """The strategy in use, as the ``run_started`` event and the header show it.

    Attributes:
        strategy: the tf.distribute strategy.
        name: one_device, mirrored or multi_worker.
        replicas: replicas in sync across every worker.
        devices: the devices of every replica (all workers' for multi_worker).
        is_chief: this worker writes the events, checkpoints and model.
        worker_index: this worker's index in ``cluster``.
        workers: how many workers train together (1 unless multi_worker).
        cluster: the workers' host:port addresses (multi_worker only).
        local: this worker's replica devices, when ``devices`` names others' too.
    """

    strategy: Any
    name: str
    replicas: int
    devices: list[str]
    is_chief: bool = True
    worker_index: int = 0
    workers: int = 1
    cluster: list[str] = field(default_factory=list)
    local: list[str] = field(default_factory=list)

    @property
    def local_devices(self) -> list[str]:
        """This worker's replica devices."""
        return self.local or self.devices

    @property
    def multi_worker(self) -> bool:
        return self.workers > 1


def configure_devices(train: TrainConfig) -> None:
    """Split the CPU into logical devices and let GPU memory grow; call before any TF op."""
    import tensorflow as tf

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
    """The strategy ``train.strategy`` asks for.

    Raises:
        ConfigError: a device that is not there, a malformed TF_CONFIG, a
            worker that cannot be reached within ``CONVDECK_WORKER_TIMEOUT``.
    """
    if train.strategy == "multi_worker":
        # Before anything lists devices: collective ops must be set up before
        # TensorFlow's runtime starts.
        return _multi_worker(train)
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    name = train.strategy
    if name == "auto":
        several = len(gpus) > 1 or (train.virtual_cpus > 1 and not gpus)
        name = "mirrored" if several or len(train.devices) > 1 else "one_device"
    if name == "one_device":
        if len(train.devices) > 1:
            raise ConfigError(
                f"train.devices: one_device takes one device, got {len(train.devices)} "
                f"({', '.join(train.devices)}); use train.strategy = \"mirrored\" for several"
            )
        device = train.devices[0] if train.devices else (gpus or cpus)[0]
        device = _check_devices([device], gpus + cpus)[0]
        if device == (gpus or cpus)[0]:
            # Where TensorFlow places everything anyway, its default strategy trains as
            # OneDeviceStrategy would, without feeding each batch through a distributed
            # iterator: 7% of a LeNet-5 step on a CPU. Plain Keras does the same.
            return StrategyInfo(tf.distribute.get_strategy(), "one_device", 1, [device])
        return _info(tf.distribute.OneDeviceStrategy(device), "one_device")
    devices = _check_devices(list(train.devices) or gpus or cpus, gpus + cpus)
    return _info(tf.distribute.MirroredStrategy(devices), "mirrored")


def _check_devices(wanted: list[str], present: list[str]) -> list[str]:
    """The full names of ``wanted``; ConfigError naming one that is not on this machine."""
    by_short = {_short(d): d for d in present}
    found = []
    for device in wanted:
        short = _short(device)
        if short not in by_short:
            raise ConfigError(
                f"train.devices: {device!r} is not on this machine; present: "
                f"{', '.join(sorted(by_short)) or 'none'}"
            )
        if by_short[short] in found:
            raise ConfigError(f"train.devices: {device!r} is listed twice")
        found.append(by_short[short])
    return found


def _short(device: str) -> str:
    """'/job:localhost/replica:0/task:0/device:GPU:1' and '/gpu:1' both become 'GPU:1'."""
    tail = device.split("device:")[-1].strip().lstrip("/")
    kind, _, index = tail.partition(":")
    return f"{kind.upper()}:{index or 0}"


def _info(strategy: Any, name: str) -> StrategyInfo:
    devices = list(getattr(strategy.extended, "worker_devices", []) or [])
    return StrategyInfo(strategy, name, strategy.num_replicas_in_sync, devices)


# -- multi-worker --------------------------------------------------------------------


def _multi_worker(train: TrainConfig) -> StrategyInfo:
    if train.devices:
        raise ConfigError(
            "train.devices is for one_device and mirrored; multi_worker trains on every GPU "
            "of each worker (limit them with CUDA_VISIBLE_DEVICES)"
        )
    config = read_tf_config()
    addresses, task_type, index = cluster_addresses(config)
    position = addresses.index(config["cluster"][task_type][index])
    wait_for_workers(addresses, position, worker_timeout())

    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    resolver = strategy.cluster_resolver
    is_chief = task_type == "chief" or ("chief" not in config["cluster"] and index == 0)
    local = list(strategy.extended.worker_devices)
    # Every worker has the same devices (TensorFlow assumes so too): name them all.
    devices = [
        re.sub(r"/task:\d+", f"/task:{i}", d).replace(f"/job:{resolver.task_type}", f"/job:{t}")
        for t, i in cluster_tasks(config)
        for d in local
    ]
    return StrategyInfo(
        strategy,
        "multi_worker",
        strategy.num_replicas_in_sync,
        devices,
        is_chief=is_chief,
        worker_index=position,
        workers=len(addresses),
        cluster=addresses,
        local=local,
    )


def remember_tf_config(run_dir: Path) -> None:
    """Keep the cluster a multi-worker run uses; without TF_CONFIG, take the kept one.

    `convdeck run --workers` sets TF_CONFIG for the worker it starts; the
    worker keeps it in the run directory so `convdeck resume RUN` (without
    --workers) rejoins the same cluster in the same role.
    """
    path = Path(run_dir) / TF_CONFIG_FILE
    raw = os.environ.get("TF_CONFIG")
    if raw and raw.strip():
        read_tf_config(raw)  # a malformed one is reported, not kept
        tmp = path.with_suffix(".tmp")
        tmp.write_text(raw)
        os.replace(tmp, path)
    elif path.exists():
        os.environ["TF_CONFIG"] = path.read_text()


def wait_for_workers(
    addresses: list[str], index: int, timeout: float, poll: float = 0.25
) -> None:
    """Listen on this worker's port and reach every other worker's, or fail in one line.

    MultiWorkerMirroredStrategy waits for its peers without end, holding the
    interpreter, so an address that is wrong or a worker that never starts
    would hang the run. Before it, each worker opens its own port (plain
    TCP, closed again before TensorFlow takes the port) and connects to every
    other one until all have answered or ``timeout`` seconds pass.

    Raises:
        ConfigError: this worker's port cannot be opened, or some worker
            was not reached in time (named, with the last error).
    """
    own = addresses[index]
    _host, _, port = own.rpartition(":")
    listener = _listen(int(port), own, index)
    stop = threading.Event()
    thread = threading.Thread(target=_answer, args=(listener, stop), daemon=True)
    thread.start()
    try:
        missing = {i: "no answer yet" for i in range(len(addresses)) if i != index}
        deadline = time.monotonic() + timeout
        while missing:
            for i in list(missing):
                error = _reach(addresses[i], max(0.1, min(2.0, deadline - time.monotonic())))
                if error is None:
                    del missing[i]
                else:
                    missing[i] = error
            if not missing or time.monotonic() >= deadline:
                break
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
    finally:
        stop.set()
        listener.close()
        thread.join(2.0)
    if missing:
        names = ", ".join(f"worker {i} ({addresses[i]}: {why})" for i, why in missing.items())
        raise ConfigError(
            f"cannot reach {names} within {timeout:g} s; start the same preset there with "
            f"`convdeck run ... --workers {','.join(addresses)} --worker-index N`, check the "
            f"addresses and firewalls, or wait longer with {WORKER_TIMEOUT_ENV}=SECONDS"
        )


def _listen(port: int, own: str, index: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", port))
    except OSError as error:
        listener.close()
        raise ConfigError(
            f"worker {index} is {own}, but port {port} cannot be opened on this machine "
            f"({error.strerror or error}); is another worker using it? pick a free port"
        ) from None
    listener.listen(16)
    listener.settimeout(0.2)
    return listener


def _answer(listener: socket.socket, stop: threading.Event) -> None:
    """Accept and close connections until stopped: other workers only check we are there."""
    while not stop.is_set():
        try:
            connection, _ = listener.accept()
            connection.close()
        except TimeoutError:
            continue
        except OSError:
            return


def _reach(address: str, timeout: float) -> str | None:
    """None if a TCP connection to ``address`` opens, else why not (a few words)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except socket.gaierror:
        return f"unknown host {host!r}"
    except TimeoutError:
        return "timed out"
    except ConnectionRefusedError:
        return "connection refused"
    except OSError as error:
        return error.strerror or type(error).__name__


# -- multi-worker state, events and checkpoints -----------------------------------------


def broadcast_from_chief(strategy: Any, tensors: list) -> list:
    """The chief's values of ``tensors`` (variables or tensors), on every worker.

    A SUM all-reduce in which only replica 0 (on the chief) contributes. Call
    it on every worker at the same point, as with any collective.
    """
    import tensorflow as tf

    def replica_fn():
        context = tf.distribute.get_replica_context()
        first = tf.equal(context.replica_id_in_sync_group, 0)
        values = [tf.convert_to_tensor(t) for t in tensors]
        # One dtype for the packed all-reduce: float64 holds float32 weights
        # and integer counters (below 2**53) exactly.
        wire = [tf.cast(v, tf.float64) for v in values]
        summed = context.all_reduce(
            tf.distribute.ReduceOp.SUM, [tf.where(first, w, tf.zeros_like(w)) for w in wire]
        )
        return [tf.cast(s, v.dtype) for s, v in zip(summed, values, strict=True)]

    results = tf.function(lambda: strategy.run(replica_fn))()
    return [strategy.experimental_local_results(r)[0] for r in results]


class Agreement:
    """One small all-reduce between calls that keeps the workers in step.

    Every worker must run the same calls of the same size, save at the same
    steps and stop together, or a collective waits for ever. Before each call
    the workers agree: ``chief`` values (steps per call, a checkpoint asked
    for) come from the chief, ``anyone`` values (a stop) are summed over all.
    """

    def __init__(self, strategy: Any) -> None:
        import tensorflow as tf

        self.strategy = strategy
        self._tf = tf
        self._agree = tf.function(self._all_reduce)

    def _all_reduce(self, chief, anyone):
        tf = self._tf

        def replica_fn(chief, anyone):
            context = tf.distribute.get_replica_context()
            first = tf.equal(context.replica_id_in_sync_group, 0)
            chief = tf.where(first, chief, tf.zeros_like(chief))
            # identity places the value on this replica's device, as all_reduce needs.
            return context.all_reduce(tf.distribute.ReduceOp.SUM, [chief, tf.identity(anyone)])

        return self.strategy.run(replica_fn, args=(chief, anyone))

    def __call__(self, chief: list[float], anyone: list[float]) -> tuple[list[float], list[float]]:
        tf = self._tf
        summed = self._agree(tf.constant(chief, tf.float64), tf.constant(anyone, tf.float64))
        local = self.strategy.experimental_local_results
        return [float(v) for v in local(summed[0])[0].numpy()], [
            float(v) for v in local(summed[1])[0].numpy()
        ]


def take_chief_state(strategy: Any, variables: list, flag: int) -> int:
    """Set ``variables`` to the chief's values on every worker; returns the chief's ``flag``.

    A worker joining a resumed run has no checkpoint of its own: it takes the
    weights, optimizer state and progress the chief restored.
    """
    import tensorflow as tf

    values = broadcast_from_chief(strategy, [*variables, tf.constant(flag, tf.int64)])
    for variable, value in zip(variables, values[:-1], strict=True):
        variable.assign(value)
    return int(values[-1].numpy())


class NonChiefEvents:
    """The event writer of a non-chief worker: only what its own run directory needs.

    Steps, epochs and checkpoints are the chief's record; a non-chief worker
    keeps its start, its log lines and how it ended, so that `convdeck runs`
    and `convdeck resume` work on its machine too.
    """

    def __init__(self, writer: Any, kept: tuple[str, ...] = NON_CHIEF_EVENTS) -> None:
        self.writer = writer
        self.kept = kept

    def emit(self, type: str, **fields: Any) -> dict:
        if type in self.kept:
            return self.writer.emit(type, **fields)
        return {"type": type, "time": round(time.time(), 3), **fields}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.writer, name)


def scratch_checkpoint_dir(run_dir: Path, index: int) -> Path:
    """Where a non-chief worker writes its share of each checkpoint; removed after each save."""
    return Path(run_dir) / f".worker-{index}-scratch"


def remove_scratch(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


_LOST_PEER_ERRORS = ("UnavailableError", "AbortedError", "CancelledError", "DeadlineExceededError")


def lost_workers_message(error: BaseException) -> str | None:
    """One line for a collective that failed because another worker went away, else None."""
    if type(error).__name__ not in _LOST_PEER_ERRORS:
        return None
    text = str(error)
    found = re.search(r"Collective ops is aborted by: ([^\n]+)", text)
    why = found.group(1).strip() if found else text.strip().splitlines()[0] if text.strip() else ""
    return (
        f"lost contact with another worker ({why[:160]}); it stopped or died: see its run, then "
        "resume every worker with `convdeck resume RUN`"
    )


# -- out-of-memory ------------------------------------------------------------------------

_OOM_DEVICE = re.compile(r"\bon (/job:[^\s]+?/device:[A-Za-z_]+:\d+|/device:[A-Za-z_]+:\d+)")
_OOM_ALLOCATOR = re.compile(r"\bby allocator ([A-Za-z]+)_(\d+)_bfc")


def oom_device(message: str) -> str | None:
    """The device an out-of-memory error names (``.../device:GPU:1``), or None.

    TensorFlow says e.g. "OOM when allocating tensor with shape[...] and type
    float on /job:localhost/replica:0/task:0/device:GPU:1 by allocator GPU_1_bfc".
    """
    found = _OOM_DEVICE.search(message or "")
    if found:
        return found.group(1)
    found = _OOM_ALLOCATOR.search(message or "")
    if found:
        return f"/device:{found.group(1).upper()}:{found.group(2)}"
    return None
