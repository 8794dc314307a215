"""engine.run.queue: the queue file, its transactions, and what a person may change."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from engine.errors import ConfigError
from engine.run.queue import CLAIMED, ENDED, LAUNCHED, QUEUED, SCHEMA_VERSION, RunQueue, queue_path


@pytest.fixture
def queue(tmp_path):
    q = RunQueue(tmp_path)
    yield q
    q.close()


def test_entries_keep_the_order_they_were_added_in(queue):
    a = queue.add("lenet5-digits")
    b = queue.add("resnet18-cifar10", ["train.batch_size=64"], gpus=2)
    assert [e.id for e in queue.entries()] == [a.id, b.id]
    assert queue.get(b.id).overrides == ["train.batch_size=64"] and queue.get(b.id).gpus == 2
    assert all(e.state == QUEUED for e in queue.entries())


def test_move_puts_a_waiting_entry_at_its_place(queue):
    ids = [queue.add(f"p{i}").id for i in range(4)]
    queue.move(ids[3], 1)
    assert [e.id for e in queue.entries()] == [ids[3], ids[0], ids[1], ids[2]]
    queue.move(ids[3], 99)  # past the end: last
    assert [e.id for e in queue.entries()][-1] == ids[3]
    with pytest.raises(ConfigError, match="counts from 1"):
        queue.move(ids[0], 0)


def test_a_started_entry_can_neither_move_nor_be_removed(queue):
    entry = queue.add("lenet5-digits")
    claimed = queue.claim_next(lambda e: f"run-{e.id}")
    assert claimed.id == entry.id and claimed.state == CLAIMED and claimed.run_id == f"run-{entry.id}"
    with pytest.raises(ConfigError, match=r"running as run-\d+; stop it with `convdeck ctl"):
        queue.remove(entry.id)
    with pytest.raises(ConfigError, match="already started"):
        queue.move(entry.id, 1)


def test_remove_and_unknown_ids(queue):
    entry = queue.add("lenet5-digits")
    queue.remove(entry.id)
    assert queue.entries() == []
    with pytest.raises(ConfigError, match=f"no queue entry {entry.id}"):
        queue.remove(entry.id)


def test_claim_skips_entries_wider_than_the_free_gpus(queue):
    wide = queue.add("big", gpus=2)
    narrow = queue.add("small")
    assert queue.claim_next(lambda e: "r1", max_gpus=1).id == narrow.id
    assert queue.claim_next(lambda e: "r2", max_gpus=1) is None
    assert queue.claim_next(lambda e: "r3", max_gpus=2).id == wide.id


def test_states_and_outcomes(queue):
    entry = queue.add("lenet5-digits")
    queue.claim_next(lambda e: "r")
    queue.mark(entry.id, LAUNCHED)
    assert [e.id for e in queue.started()] == [entry.id]
    queue.mark(entry.id, ENDED, outcome="finished")
    ended = queue.get(entry.id)
    assert ended.state == ENDED and ended.outcome == "finished" and ended.ended is not None
    assert queue.started() == [] and queue.entries(include_ended=False) == []


def test_pause_is_kept_in_the_file(tmp_path, queue):
    queue.set_paused(True)
    assert RunQueue(tmp_path).paused() is True
    queue.set_paused(False)
    assert RunQueue(tmp_path).paused() is False


def test_a_queue_from_a_newer_convdeck_is_refused_untouched(tmp_path):
    path = queue_path(tmp_path)
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=f"version {SCHEMA_VERSION + 1}, from a newer convdeck"):
        RunQueue(tmp_path)
    assert path.read_bytes() == before


def test_a_file_that_is_not_a_queue_is_one_line(tmp_path):
    queue_path(tmp_path).write_text("not sqlite at all " * 100)
    with pytest.raises(ConfigError, match="is not a convdeck queue"):
        RunQueue(tmp_path)


def _claim_all(home: str, out: multiprocessing.Queue) -> None:
    queue = RunQueue(Path(home))
    mine = []
    while (entry := queue.claim_next(lambda e: f"run-{e.id}")) is not None:
        mine.append(entry.id)
    out.put(mine)


def test_two_processes_claiming_at_once_never_claim_one_entry_twice(tmp_path):
    queue = RunQueue(tmp_path)
    ids = {queue.add(f"p{i}").id for i in range(60)}
    out: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    workers = [
        multiprocessing.get_context("spawn").Process(target=_claim_all, args=(str(tmp_path), out))
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    claimed = [out.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    flat = [entry_id for mine in claimed for entry_id in mine]
    assert sorted(flat) == sorted(ids)  # each exactly once


def test_slots_go_to_gpus_with_enough_free_memory_and_no_queue_run():
    from engine.gpu import GIB, GpuDevice, GpuSample
    from engine.run.queue_runner import plan_slots

    def device(index: int, used_gib: float) -> GpuDevice:
        return GpuDevice(index=index, name="H200", memory_used=int(used_gib * GIB), memory_total=int(140 * GIB))

    sample = GpuSample(devices=[device(0, 0.5), device(1, 139.0), device(2, 10.0), device(3, 1.0)])
    # GPU 1 is nearly full (another user's job), GPU 3 already runs a queue run.
    assert plan_slots(sample, busy_gpus={3}, live_runs=1, min_free_gib=2.0).gpus == [0, 2]
    assert plan_slots(sample, busy_gpus=set(), live_runs=0, min_free_gib=131.0).gpus == [0, 3]


def test_without_a_gpu_one_run_at_a_time():
    from engine.gpu import GpuSample
    from engine.run.queue_runner import plan_slots

    none = GpuSample(unavailable="no NVIDIA driver")
    assert plan_slots(none, set(), live_runs=0, min_free_gib=2.0).cpu == 1
    assert plan_slots(none, set(), live_runs=1, min_free_gib=2.0).cpu == 0
