"""engine.run.protocol: every event written anywhere is declared, with its fields, and README lists them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from engine.run import protocol
from engine.run.protocol import EVENT_TYPES, EventError, RemedyOffer, Step
from engine.run.supervisor import Sample, diagnose

ROOT = Path(__file__).resolve().parent.parent


def emit_calls(folder: Path) -> list[tuple[str, str | None, list[str]]]:
    """Every ``.emit(...)`` call under ``folder``: where, its type (None if not a constant), its fields."""
    calls = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr != "emit":
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            first = node.args[0] if node.args else None
            kind = first.value if isinstance(first, ast.Constant) else None
            if isinstance(first, ast.Name) and first.id == "type":
                kind = "<forwarded>"
            fields = [k.arg for k in node.keywords if k.arg is not None]
            calls.append((where, kind, fields))
    return calls


def test_every_event_the_engine_writes_is_declared_with_its_fields():
    calls = emit_calls(ROOT / "engine")
    assert len(calls) > 20  # the scan sees the worker, trainer, memory check and supervisor
    for where, kind, fields in calls:
        assert kind is not None, f"{where}: emit's type must be a literal event type"
        if kind == "<forwarded>":
            continue  # a wrapper that passes its caller's type on (NonChiefEvents)
        assert kind in EVENT_TYPES, f"{where}: event {kind!r} is not declared in protocol.py"
        undeclared = set(fields) - set(protocol.field_names(kind))
        assert not undeclared, f"{where}: {kind} has no field {sorted(undeclared)} in protocol.py"


def test_the_events_a_non_chief_worker_keeps_are_declared():
    tree = ast.parse((ROOT / "engine" / "train" / "strategy.py").read_text())
    (kept,) = [
        ast.literal_eval(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "NON_CHIEF_EVENTS" for t in node.targets)
    ]
    assert set(kept) <= set(EVENT_TYPES)


def test_the_supervisor_report_fits_worker_exit():
    samples = [Sample(time=1.0, worker_rss=10, available=5, total=100)]
    fields = diagnose(-9, samples, oom_kills=1, run_id="r")
    event = protocol.make("worker_exit", time=1.0, pid=7, final_event=False, **fields)
    assert event.signal == "SIGKILL" and event.oom_kills == 1


def readme_events() -> dict[str, list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Events", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]*) \|", section, re.M)
    return {name: re.findall(r"`(\w+)`", fields) for name, fields in rows}


def test_readme_lists_every_event_and_its_fields_as_declared():
    listed = readme_events()
    assert list(listed) == list(EVENT_TYPES), "README's events table: one row per declared type"
    for kind, fields in listed.items():
        declared = [name for name in protocol.field_names(kind) if name != "time"]
        assert fields == declared, f"README row for {kind}: fields {declared}"


def test_every_declared_type_reads_back_what_is_written():
    for kind in EVENT_TYPES:
        event = protocol.make(kind, time=5.0)
        assert event.type == kind and event.time == 5.0
        assert protocol.parse(protocol.to_json_line(event)) == event


def test_make_names_what_does_not_fit():
    with pytest.raises(EventError, match="unknown event type 'steps'"):
        protocol.make("steps", time=1.0)
    with pytest.raises(EventError, match="no field 'live'"):
        protocol.make("step", time=1.0, live=True)
    with pytest.raises(EventError, match=r"event 'oom'.*\$\.remedies"):
        protocol.make("oom", time=1.0, remedies=None)


def test_an_older_oom_naming_remedies_only_still_reads():
    event = protocol.parse('{"type": "oom", "time": 1, "remedies": ["halve-batch", {"name": "resnet18"}]}')
    assert event.remedies == ["halve-batch", RemedyOffer("resnet18")]


def test_a_batched_step_line_splits_into_steps():
    line = Step(time=1.0, step=[4, 5, 6], loss=[0.3, 0.2, 0.1], epoch=1)
    assert [(s.step, s.loss, s.epoch) for s in line.unbatched()] == [(4, 0.3, 1), (5, 0.2, 1), (6, 0.1, 1)]
    numbered_by_last = Step(time=1.0, step=6, loss=[0.3, 0.2, 0.1])
    assert [s.step for s in numbered_by_last.unbatched()] == [4, 5, 6]
    assert numbered_by_last.last() == Step(time=1.0, step=6, loss=0.1)
    plain = Step(time=1.0, step=2, loss=0.5)
    assert plain.unbatched() == [plain] and plain.last() is plain
