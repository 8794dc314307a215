"""engine.run.events: the writer's batching, and readers that survive torn and garbage lines."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest

from engine.run.events import EventTail, EventWriter, last_event_of, parse_line, read_events


def lines_of(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_writer_writes_one_json_object_per_line_with_type_and_time(tmp_path):
    path = tmp_path / "events.jsonl"
    before = time.time()
    with EventWriter(path) as writer:
        returned = writer.emit("run_started", run_id="r1", config={"name": "x"})
        writer.emit("log", level="info", message="two\nlines")
    lines = lines_of(path)
    assert len(lines) == 2
    events = [json.loads(line) for line in lines]
    assert [e["type"] for e in events] == ["run_started", "log"]
    assert all(before - 1 <= e["time"] <= time.time() + 1 for e in events)
    assert events[0] == returned
    assert events[0]["config"] == {"name": "x"}
    assert events[1]["message"] == "two\nlines"


def test_writer_creates_the_file_private(tmp_path):
    path = tmp_path / "events.jsonl"
    EventWriter(path).close()
    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def test_writer_appends_to_an_existing_file(tmp_path):
    path = tmp_path / "events.jsonl"
    with EventWriter(path) as writer:
        writer.emit("run_started")
    with EventWriter(path) as writer:
        writer.emit("resumed")
    assert [e["type"] for e in read_events(path)] == ["run_started", "resumed"]


def test_step_events_wait_for_a_non_step_event(tmp_path):
    path = tmp_path / "events.jsonl"
    writer = EventWriter(path, flush_interval=3600)
    writer.emit("step", step=1, loss=2.0)
    writer.emit("step", step=2, loss=1.5)
    assert lines_of(path) == []
    writer.emit("epoch_end", epoch=1)
    assert [json.loads(line)["type"] for line in lines_of(path)] == ["step", "step", "epoch_end"]
    writer.close()


def test_step_events_flush_after_the_interval(tmp_path):
    path = tmp_path / "events.jsonl"
    writer = EventWriter(path, flush_interval=0.05)
    writer.emit("step", step=1, loss=2.0)
    assert lines_of(path) == []
    time.sleep(0.06)
    writer.emit("step", step=2, loss=1.5)
    assert [json.loads(line)["step"] for line in lines_of(path)] == [1, 2]
    writer.emit("step", step=3, loss=1.0)  # the interval starts again
    assert len(lines_of(path)) == 2
    writer.close()
    assert len(lines_of(path)) == 3


def test_close_flushes_and_is_safe_twice(tmp_path):
    path = tmp_path / "events.jsonl"
    writer = EventWriter(path, flush_interval=3600)
    writer.emit("step", step=1)
    writer.close()
    writer.close()
    assert [json.loads(line)["step"] for line in lines_of(path)] == [1]


def test_writer_turns_numpy_like_and_paths_into_json(tmp_path):
    class Scalar:
        def item(self):
            return 0.25

    class Array:
        def tolist(self):
            return [1, 2]

    path = tmp_path / "events.jsonl"
    with EventWriter(path) as writer:
        writer.emit("checkpoint", loss=Scalar(), shape=Array(), path=tmp_path / "ckpt")
    (event,) = read_events(path)
    assert event["loss"] == 0.25
    assert event["shape"] == [1, 2]
    assert event["path"] == str(tmp_path / "ckpt")


@pytest.mark.parametrize(
    "line",
    [b"", b"garbage", b'{"type": "st', b"[1, 2]", b'{"time": 1}', b'"step"', b"\xff\xfe{}"],
)
def test_parse_line_rejects_torn_and_garbage_lines(line):
    assert parse_line(line) is None


def test_parse_line_accepts_bytes_and_text():
    assert parse_line(b'{"type": "log", "time": 1}\n') == {"type": "log", "time": 1}
    assert parse_line('{"type": "log"}') == {"type": "log"}


def write_raw(path, *chunks: str) -> None:
    with open(path, "a") as handle:
        handle.write("".join(chunks))


def event_line(kind: str, **fields) -> str:
    return json.dumps({"type": kind, "time": 1.0, **fields}) + "\n"


def test_read_events_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "events.jsonl"
    write_raw(path, event_line("run_started"), event_line("step", step=1), '{"type": "step", "st')
    assert [e["type"] for e in read_events(path)] == ["run_started", "step"]


def test_read_events_skips_a_garbage_middle_line(tmp_path):
    path = tmp_path / "events.jsonl"
    write_raw(path, event_line("run_started"), "not json at all\n", "\n", event_line("finished"))
    assert [e["type"] for e in read_events(path)] == ["run_started", "finished"]


def test_read_events_takes_a_whole_unterminated_last_line(tmp_path):
    path = tmp_path / "events.jsonl"
    write_raw(path, event_line("run_started"), event_line("finished").rstrip("\n"))
    assert [e["type"] for e in read_events(path)] == ["run_started", "finished"]


def test_read_events_of_missing_or_empty_file(tmp_path):
    assert read_events(tmp_path / "absent.jsonl") == []
    (tmp_path / "empty.jsonl").write_text("")
    assert read_events(tmp_path / "empty.jsonl") == []


def test_read_events_reads_a_file_larger_than_one_chunk(tmp_path):
    path = tmp_path / "events.jsonl"
    padding = "x" * 1000
    write_raw(path, *(event_line("step", step=i, pad=padding) for i in range(10_000)))
    assert os.path.getsize(path) > 8 << 20
    events = read_events(path)
    assert [e["step"] for e in events] == list(range(10_000))


def test_tail_returns_only_complete_lines_and_completes_them_later(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.read_new() == []  # no file yet
    write_raw(path, event_line("run_started"), '{"type": "step", "step"')
    assert [e["type"] for e in tail.read_new()] == ["run_started"]
    assert not tail.at_end()
    assert tail.read_new() == []
    write_raw(path, ': 7, "time": 2.0}\n')
    (event,) = tail.read_new()
    assert event == {"type": "step", "step": 7, "time": 2.0}
    assert tail.at_end()
    assert tail.read_new() == []
    write_raw(path, event_line("finished"))
    assert [e["type"] for e in tail.read_new()] == ["finished"]


def test_tail_counts_garbage_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    write_raw(path, "garbage\n", "\n", event_line("log"), "{broken\n")
    tail = EventTail(path)
    assert [e["type"] for e in tail.read_new()] == ["log"]
    assert tail.skipped == 2


def test_tail_can_start_at_an_offset(tmp_path):
    path = tmp_path / "events.jsonl"
    first = event_line("run_started")
    write_raw(path, first, event_line("finished"))
    tail = EventTail(path, offset=len(first.encode()))
    assert [e["type"] for e in tail.read_new()] == ["finished"]


def test_tail_reads_at_most_max_bytes_of_whole_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    lines = [event_line("step", step=i) for i in range(3)]
    write_raw(path, *lines)
    tail = EventTail(path)
    limit = len(lines[0].encode()) + 5
    assert [e["step"] for e in tail.read_new(max_bytes=limit)] == [0]
    assert [e["step"] for e in tail.read_new()] == [1, 2]


def test_last_event_of(tmp_path):
    path = tmp_path / "events.jsonl"
    write_raw(
        path,
        event_line("run_started"),
        event_line("step", step=1),
        event_line("epoch_end", epoch=1),
        event_line("step", step=2),
        '{"type": "finished", "ti',
    )
    assert last_event_of(path, ("step",))["step"] == 2
    assert last_event_of(path, ("epoch_end", "run_started"))["type"] == "epoch_end"
    assert last_event_of(path, ("finished", "failed")) is None
    assert last_event_of(tmp_path / "absent.jsonl", ("step",)) is None


def test_last_event_of_scans_past_the_window(tmp_path):
    path = tmp_path / "events.jsonl"
    write_raw(path, event_line("run_started", run_id="early"))
    write_raw(path, *(event_line("step", step=i) for i in range(200)))
    found = last_event_of(path, ("run_started",), window=256)
    assert found is not None and found["run_id"] == "early"
    assert last_event_of(path, ("step",), window=256)["step"] == 199
