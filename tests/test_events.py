"""engine.run.events: the writer's batching and checks, and readers that survive torn,
garbage and wrong-typed lines."""

from __future__ import annotations

import json
import math
import os
import re
import stat
import time

import pytest

from engine.run.events import EventTail, EventWriter, last_event_of, parse_line, read_events
from engine.run.protocol import EventError, Log, Step


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
    assert lines[0].startswith('{"type": "run_started", "time": ')


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
    assert types(read_events(path)) == ["run_started", "resumed"]


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


def test_writer_turns_numpy_and_paths_into_json(tmp_path):
    import numpy as np

    path = tmp_path / "events.jsonl"
    with EventWriter(path) as writer:
        writer.emit("checkpoint", step=np.int64(7), path=tmp_path / "ckpt")
        writer.emit("step", step=np.array([1, 2]), loss=np.float32(0.25), accuracy=np.float64(0.5))
    checkpoint, step = read_events(path)
    assert (checkpoint.step, checkpoint.path) == (7, str(tmp_path / "ckpt"))
    assert (step.step, step.loss, step.accuracy) == ([1, 2], 0.25, 0.5)


@pytest.mark.parametrize(
    ("kind", "fields", "says"),
    [
        ("stepp", {}, "unknown event type 'stepp'"),
        ("step", {"losss": 1.0}, "event 'step' has no field 'losss'"),
        ("failed", {"error": 5}, "Expected `str`, got `int` - at `$.error`"),
        ("run_started", {"config": "notadict"}, "at `$.config`"),
    ],
)
def test_writer_refuses_an_event_its_declaration_does_not_allow(tmp_path, kind, fields, says):
    path = tmp_path / "events.jsonl"
    with EventWriter(path) as writer:
        with pytest.raises(EventError, match=re.escape(says)):
            writer.emit(kind, **fields)
    assert read_events(path) == []  # nothing reached the file


def test_writer_writes_a_nan_loss_that_readers_read_back(tmp_path):
    path = tmp_path / "events.jsonl"
    with EventWriter(path) as writer:
        writer.emit("epoch_end", epoch=1, val_loss=float("nan"), val_accuracy=float("inf"))
    (event,) = read_events(path)
    assert math.isnan(event.val_loss) and event.val_accuracy == math.inf


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"garbage",
        b'{"type": "st',
        b"[1, 2]",
        b'{"time": 1}',
        b'"step"',
        b"\xff\xfe{}",
        b'{"type": "log"}',  # every event has a time
        b'{"type": "mystery", "time": 1}',
        b'{"type": "run_started", "time": 1, "config": "notadict"}',
        b'{"type": "failed", "time": 1, "error": 5}',
        b'{"type": "step", "time": 1, "step": 1e400}',
        b'{"type": "step", "time": 1, "loss": "abc"}',
        b'{"type": "oom", "time": 1, "remedies": null}',
        b'{"type": "remedy_applied", "time": 1, "changes": {"train.batch_size": [256]}}',
    ],
)
def test_parse_line_rejects_torn_garbage_and_wrong_typed_lines(line):
    assert parse_line(line) is None


def test_parse_line_accepts_bytes_and_text():
    assert parse_line(b'{"type": "log", "time": 1}\n') == Log(time=1.0)
    assert parse_line('{"type": "log", "time": 1, "message": "hi"}').message == "hi"


@pytest.mark.parametrize(
    ("text", "loss"), [("1e400", math.inf), ("-Infinity", -math.inf), ("NaN", math.nan)]
)
def test_numbers_json_cannot_hold_are_read_as_floats(text, loss):
    event = parse_line(f'{{"type": "step", "time": 1, "step": 3, "loss": {text}}}')
    assert isinstance(event, Step) and event.step == 3
    assert event.loss == loss or (math.isnan(loss) and math.isnan(event.loss))


def test_fields_a_reader_does_not_know_are_ignored():
    event = parse_line('{"type": "checkpoint", "time": 1, "step": 4, "from_the_future": [1]}')
    assert event.step == 4


def write_raw(path, *chunks: str) -> None:
    with open(path, "a") as handle:
        handle.write("".join(chunks))


def event_line(kind: str, **fields) -> str:
    return json.dumps({"type": kind, "time": 1.0, **fields}) + "\n"


def types(events) -> list[str]:
    return [event.type for event in events]


def test_read_events_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "events.jsonl"
    write_raw(path, event_line("run_started"), event_line("step", step=1), '{"type": "step", "st')
    assert types(read_events(path)) == ["run_started", "step"]


def test_read_events_skips_a_garbage_middle_line(tmp_path):
    path = tmp_path / "events.jsonl"
    write_raw(
        path,
        event_line("run_started"),
        "not json at all\n",
        "\n",
        event_line("failed", error=5),
        event_line("finished"),
    )
    assert types(read_events(path)) == ["run_started", "finished"]


def test_read_events_takes_a_whole_unterminated_last_line(tmp_path):
    path = tmp_path / "events.jsonl"
    write_raw(path, event_line("run_started"), event_line("finished").rstrip("\n"))
    assert types(read_events(path)) == ["run_started", "finished"]


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
    assert [e.step for e in events] == list(range(10_000))


def test_tail_returns_only_complete_lines_and_completes_them_later(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.read_new() == []  # no file yet
    write_raw(path, event_line("run_started"), '{"type": "step", "step"')
    assert types(tail.read_new()) == ["run_started"]
    assert not tail.at_end()
    assert tail.read_new() == []
    write_raw(path, ': 7, "time": 2.0}\n')
    (event,) = tail.read_new()
    assert event == Step(time=2.0, step=7)
    assert tail.at_end()
    assert tail.read_new() == []
    write_raw(path, event_line("finished"))
    assert types(tail.read_new()) == ["finished"]


def test_tail_counts_garbage_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    write_raw(path, "garbage\n", "\n", event_line("log"), "{broken\n", event_line("log", level=3))
    tail = EventTail(path)
    assert types(tail.read_new()) == ["log"]
    assert tail.skipped == 3


def test_tail_can_start_at_an_offset(tmp_path):
    path = tmp_path / "events.jsonl"
    first = event_line("run_started")
    write_raw(path, first, event_line("finished"))
    tail = EventTail(path, offset=len(first.encode()))
    assert types(tail.read_new()) == ["finished"]


def test_tail_reads_at_most_max_bytes_of_whole_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    lines = [event_line("step", step=i) for i in range(3)]
    write_raw(path, *lines)
    tail = EventTail(path)
    limit = len(lines[0].encode()) + 5
    assert [e.step for e in tail.read_new(max_bytes=limit)] == [0]
    assert [e.step for e in tail.read_new()] == [1, 2]


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
    assert last_event_of(path, ("step",)).step == 2
    assert last_event_of(path, ("epoch_end", "run_started")).type == "epoch_end"
    assert last_event_of(path, ("finished", "failed")) is None
    assert last_event_of(tmp_path / "absent.jsonl", ("step",)) is None


def test_last_event_of_scans_past_the_window(tmp_path):
    path = tmp_path / "events.jsonl"
    write_raw(path, event_line("run_started", run_id="early"))
    write_raw(path, *(event_line("step", step=i) for i in range(200)))
    found = last_event_of(path, ("run_started",), window=256)
    assert found is not None and found.run_id == "early"
    assert last_event_of(path, ("step",), window=256).step == 199
