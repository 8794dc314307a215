"""engine.run.facts: the one fold of a run's events, the same however its log is read."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.run import protocol
from engine.run.facts import LogFolder, RunFacts, read_facts
from engine.run.protocol import (
    Building,
    Checkpoint,
    EpochEnd,
    Failed,
    Finished,
    Log,
    Nan,
    Oom,
    Paused,
    RemedyApplied,
    RemedyOffer,
    Resumed,
    RunStarted,
    Step,
    WorkerExit,
)
from engine.run.store import Liveness

# -- logs as a worker writes them ---------------------------------------------------------

times = st.floats(0, 2e9, allow_nan=False)
figures = st.floats(0, 10, allow_nan=False)
small = st.integers(0, 50)
archs = st.sampled_from(["lenet5", "resnet", "vgg", "alexnet"])


@st.composite
def run_started(draw) -> RunStarted:
    arch = draw(archs)
    return RunStarted(
        time=draw(times),
        run_id=draw(st.sampled_from(["r1", "r2"])),
        pid=draw(st.integers(1, 9)),
        config={"name": "p", "model": {"arch": arch, "blocks": [2, 2, 2, 2], "depth": 16}},
        steps_per_epoch=draw(st.integers(1, 20)),
        epochs=draw(st.integers(1, 9)),
        resumed_from_step=draw(st.none() | small),
        strategy=draw(st.sampled_from([None, "one_device", "mirrored"])),
        replicas=draw(st.none() | st.integers(1, 4)),
    )


@st.composite
def step(draw) -> Step:
    count = draw(st.integers(1, 3))
    numbers = sorted(draw(st.lists(small, min_size=count, max_size=count)))

    def values(strategy):
        drawn = draw(st.lists(strategy, min_size=count, max_size=count))
        return drawn if count > 1 else drawn[0]

    return Step(
        time=draw(times),
        step=numbers if count > 1 else numbers[0],
        epoch=values(st.integers(1, 9)),
        loss=values(figures),
        accuracy=values(figures),
        learning_rate=values(figures),
        images_per_sec=values(figures),
        step_time=values(figures),
    )


offers = st.lists(
    st.sampled_from(["halve-batch", "mixed-precision"]).map(lambda name: RemedyOffer(name, "k")),
    max_size=2,
)
changes = st.dictionaries(
    st.sampled_from(["train.batch_size", "train.steps_per_epoch", "model.arch", "mixed_precision"]),
    st.tuples(st.integers(1, 64), st.integers(1, 64) | archs).map(list),
    max_size=3,
)
other_events = st.one_of(
    run_started(),
    st.builds(EpochEnd, time=times, epoch=st.integers(1, 9), step=small, loss=figures, val_accuracy=figures),
    st.builds(Checkpoint, time=times, step=small, path=st.just("ckpt")),
    st.builds(Paused, time=times, step=small),
    st.builds(Resumed, time=times, step=small),
    st.builds(Oom, time=times, step=small, batch_size=small, remedies=offers, waiting=st.booleans()),
    st.builds(RemedyApplied, time=times, name=st.just("halve-batch"), changes=changes),
    st.builds(Nan, time=times, step=small),
    st.builds(Log, time=times, message=st.sampled_from(["hi", "applying remedy x: y"]),
              restarting=st.none() | st.just("mixed-precision")),  # fmt: skip
    st.builds(Finished, time=times, reason=st.sampled_from(["completed", "stopped", "nan"])),
    st.builds(Failed, time=times, error=st.just("boom")),
    st.builds(WorkerExit, time=times, final_event=st.booleans(), signal=st.just("SIGKILL")),
    st.builds(Building, time=times),
)
logs = st.lists(st.one_of(step(), step(), other_events), max_size=40)
garbage = st.sampled_from(
    [
        "not json",
        '{"type": "step", "st',
        '{"type": "step", "time": 1, "step": 1e400}',
        '{"type": "run_started", "time": 1, "config": "notadict"}',
        '{"type": "failed", "time": 1, "error": 5}',
        '{"type": "mystery", "time": 1}',
        '{"type": "step", "time": 1, "step": 3, "loss": NaN}',
        '{"type": "epoch_end", "time": 1e400, "epoch": 2, "val_accuracy": Infinity}',
        "\xff\xfe",
        "",
    ]
)


def encode(log: list) -> bytes:
    return "".join(protocol.to_json_line(event) for event in log).encode()


def folded(log: list) -> RunFacts:
    return RunFacts().apply(log)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


# -- the properties ---------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(logs, st.lists(st.integers(0, 10_000), max_size=6))
def test_one_pass_equals_line_by_line_and_any_chunking(log, cuts):
    whole = folded(log)
    one_by_one = RunFacts()
    for event in log:
        one_by_one.fold(event)
    assert one_by_one == whole
    chunked = RunFacts()
    points = sorted({0, len(log), *(cut % (len(log) + 1) for cut in cuts)})
    for a, b in zip(points, points[1:], strict=False):
        chunked.apply(log[a:b])
    assert chunked == whole


@settings(max_examples=150, deadline=None)
@given(logs, st.lists(st.integers(0, 100_000), max_size=8))
def test_the_file_reader_skipping_steps_unparsed_folds_the_same_facts(log, cuts):
    # LogFolder parses only the step before each other event: the facts do not change.
    whole = folded(log)
    folder = LogFolder()
    for piece in split(encode(log), cuts):
        folder.feed(piece)
    assert folder.close() == whole


@settings(max_examples=150, deadline=None)
@given(
    logs,
    st.lists(st.tuples(st.integers(0, 40), garbage), max_size=6),
    st.integers(0, 100_000),
    st.lists(st.integers(0, 100_000), max_size=4),
)
def test_every_prefix_of_a_log_with_garbage_folds_without_error(log, junk, cut, cuts):
    lines = [protocol.to_json_line(event) for event in log]
    for position, line in sorted(junk, reverse=True):
        lines.insert(min(position, len(lines)), line + "\n")
    data = "".join(lines).encode("utf-8", "surrogateescape")
    prefix = data[: cut % (len(data) + 1)]
    folder = LogFolder()
    for piece in split(prefix, cuts):
        folder.feed(piece)
    facts = folder.close()
    assert facts.unreadable_lines <= len(junk) + 1  # the garbage, and a line the cut tore
    facts.liveness = Liveness()
    json.dumps(facts.as_json(), allow_nan=False)
    json.dumps(facts.metrics_json(), allow_nan=False)
    assert facts.status in ("finished", "stopped", "failed", "crashed")
    _ = (facts.reason, facts.phase, facts.model, facts.eta_seconds(), facts.remedies_offered())


# -- the facts the findings were about -------------------------------------------------------


def started(**fields) -> RunStarted:
    config = {"name": "lenet5-digits", "model": {"arch": "lenet5", "blocks": [2, 2, 2, 2]}}
    values = {"run_id": "r", "config": config, "steps_per_epoch": 10, "epochs": 3, **fields}
    return RunStarted(time=100.0, **values)


def steps(first: int, last: int, epoch: int = 1, step_time: float = 0.5) -> list[Step]:
    return [
        Step(time=100.0 + n, step=n, epoch=epoch, loss=1 / n, images_per_sec=64.0, step_time=step_time)
        for n in range(first, last + 1)
    ]


def test_a_resumed_run_is_running_again_with_nothing_left_of_its_stop():
    facts = folded(
        [
            started(),
            *steps(1, 4),
            Finished(time=105.0, reason="stopped", steps=4, best_val_accuracy=None),
            started(resumed_from_step=4),
        ]
    )
    assert (facts.status, facts.phase, facts.reason, facts.final) == ("running", "loading", "", None)
    assert (facts.step, facts.started, facts.resumes) == (4, 100.0, 1)
    facts.apply(steps(5, 6))
    assert facts.phase == "training" and facts.step == 6


def test_a_starting_worker_loads_tensorflow_then_builds_then_compiles():
    facts = folded([])
    assert facts.phase == "starting"
    facts.apply([Building(time=99.0)])
    assert (facts.status, facts.phase) == ("running", "building")
    facts.apply([started()])
    assert facts.phase == "loading"
    facts.apply(steps(1, 2))
    assert facts.phase == "training"
    # A resume's worker builds again; a worker that fails while building has ended.
    facts.apply([Finished(time=103.0, reason="stopped"), Building(time=104.0)])
    assert facts.phase == "ended"
    assert folded([Building(time=99.0), Failed(time=100.0, error="no data")]).phase == "ended"


def test_the_model_and_steps_per_epoch_follow_the_remedies():
    facts = folded(
        [
            started(),
            *steps(1, 4),
            RemedyApplied(
                time=105.0,
                name="halve-batch",
                revision=1,
                changes={"train.batch_size": [64, 32], "train.steps_per_epoch": [10, 20]},
            ),
        ]
    )
    assert facts.steps_per_epoch == 20  # under the key the worker writes
    assert facts.config["train"]["batch_size"] == 32 and facts.revision == 1
    facts.fold(RemedyApplied(time=106.0, name="resnet18", revision=2, changes={"model.arch": ["lenet5", "resnet"]}))
    assert facts.model == "resnet [2,2,2,2]" and facts.preset == "lenet5-digits"
    assert facts.remedies == ["halve-batch", "resnet18"] and facts.phase == "restarting"


def test_the_eta_counts_the_epochs_left_at_the_steady_wall_time_per_step():
    facts = folded([started(), *steps(1, 10), EpochEnd(time=111.0, epoch=1, step=10), *steps(11, 14, epoch=2)])
    # 3 epochs of 10 steps; one ended and 4 steps into the second: 16 left. The steps came
    # 1 s apart on the wall clock (the worker's own 0.5 s leaves out what else a step costs),
    # and epoch 1's validation took 1 s (step 10 at 110 s, its end at 111 s): 2 more to come.
    assert facts.steps_left() == 16 and facts.validation_seconds == 1.0
    assert facts.steady_step_seconds() == (114 - 101 - 1) / 13
    assert facts.eta_seconds() == 16 * (12 / 13) + 2 * 1.0
    assert facts.total_steps == 30 and facts.epoch == 2 and facts.epochs_done == 1


def test_a_first_validation_longer_than_an_epochs_training_is_counted_in_full():
    """The worker traces the evaluation before its first step: a long first validation is a
    large validation set, and every epoch left pays for it."""
    facts = folded([started(), *steps(1, 10), EpochEnd(time=130.0, epoch=1, step=10)])
    assert facts.validation_seconds == 20.0 and facts.steady_step_seconds() == 1.0
    assert facts.eta_seconds() == 20 * 1.0 + 2 * 20.0


def test_before_a_steady_rate_the_workers_step_time_stands_in():
    facts = folded([started(), *steps(1, 1)])
    assert facts.steady_step_seconds() is None and facts.eta_seconds() == 29 * 0.5


def simulated_run(epochs=30, steps_per_epoch=50, step=0.04, validation=0.6, tracing=3.0, restart_at=None):
    """The events of a worker at a fixed speed: tracing, steady steps, a validation per epoch,
    and (``restart_at``) a remedy restart that halves the batch and so doubles the steps."""
    events, now, number = [RunStarted(time=0.0, epochs=epochs, steps_per_epoch=steps_per_epoch)], tracing, 0
    per_epoch, seconds = steps_per_epoch, step
    for epoch in range(1, epochs + 1):
        if restart_at == epoch:
            now += tracing
            per_epoch, seconds = per_epoch * 2, seconds / 2
            events.append(RunStarted(time=now, epochs=epochs, steps_per_epoch=per_epoch, resumed_from_step=number))
            now += tracing
        for _ in range(per_epoch):
            number += 1
            now += seconds
            events.append(Step(time=now, step=number, epoch=epoch, loss=1.0, step_time=seconds * 0.8))
        now += validation
        events.append(EpochEnd(time=now, epoch=epoch, step=number, val_accuracy=0.5))
    return events, now


@pytest.mark.parametrize("restart_at", [None, 8])
def test_the_eta_holds_within_ten_percent_once_five_percent_is_done(restart_at):
    events, finish = simulated_run(restart_at=restart_at)
    total = sum(isinstance(e, Step) for e in events)
    facts = RunFacts()
    worst = 0.0
    for event in events:
        facts.fold(event)
        steps_seen = facts.step
        if isinstance(event, Step) and steps_seen >= 0.05 * total and facts.rate_origin[1] < steps_seen - 5:
            error = abs(event.time + facts.eta_seconds() - finish) / (finish - event.time + 1e-9)
            worst = max(worst, error if finish - event.time > 10 else 0.0)
    assert worst < 0.10  # 5% of 30 epochs: past the first validation, which the ETA counts from


def test_a_live_run_without_steps_for_long_is_stalled_and_clears_when_they_resume(monkeypatch):
    monkeypatch.setenv("CONVDECK_STALL_MIN_SECONDS", "5")
    facts = folded([started(), *steps(1, 10)])  # a step a second
    facts.liveness = Liveness(pid=42)
    facts.observed_at = 110.0 + 4.0
    assert facts.status == "running"
    facts.observed_at = 110.0 + 21.0  # past max(5 s, 20 x 1 s)
    assert facts.status == "stalled" and facts.live and "ctl" in facts.reason
    facts.fold(Step(time=131.0, step=11, epoch=1, loss=0.1))
    assert facts.status == "running"


def test_a_pruned_trial_and_an_early_stop():
    assert folded([started(), *steps(1, 3), Finished(time=104.0, reason="pruned")]).status == "pruned"
    assert folded([started(), *steps(1, 3), Finished(time=104.0, reason="early_stop")]).status == "finished"


def test_the_phase_says_validating_after_the_last_step_of_an_epoch():
    facts = folded([started(), *steps(1, 10)])
    assert facts.phase == "validating"
    facts.fold(EpochEnd(time=111.0, epoch=1, step=10, val_accuracy=0.5))
    assert facts.phase == "training" and facts.best_val_accuracy == 0.5


def test_liveness_decides_between_running_hung_and_crashed():
    facts = folded([started(), *steps(1, 2)])
    assert facts.status == "running" and facts.live  # not asked: the events alone
    facts.liveness = Liveness(pid=42, hung=True)
    assert facts.status == "hung" and not facts.live and facts.pid == 42
    facts.liveness = Liveness()
    assert facts.status == "crashed" and facts.phase == "ended"
    facts.last_words = "Segmentation fault"
    assert "Segmentation fault" in facts.reason
    facts.fold(Finished(time=120.0, reason="completed"))
    assert facts.status == "finished"  # a terminal event decides, even as the worker exits


def test_a_supervisor_report_without_a_final_event_is_a_crash_with_its_reason():
    died = WorkerExit(time=102.0, signal="SIGKILL", message="killed by SIGKILL: x")
    facts = folded([started(), Failed(time=101.0, error="old"), started(resumed_from_step=0), died])
    assert (facts.status, facts.signal, facts.reason) == ("crashed", "SIGKILL", "killed by SIGKILL: x")
    facts.liveness = Liveness(pid=7)  # a new worker (convdeck resume) owns it now
    assert facts.status == "running"


def test_a_waiting_oom_offers_its_remedies_with_their_keys():
    offered = ["halve-batch", RemedyOffer("resnet18", "r", effect="e")]  # an older run named them only
    facts = folded([started(), Oom(time=101.0, step=3, remedies=offered)])
    assert facts.status == "waiting" and facts.reason == "out of memory at step 3"
    assert [(r.name, r.key) for r in facts.remedies_offered()] == [("halve-batch", "h"), ("resnet18", "r")]
    facts.restart_requested("halve-batch")
    assert (facts.status, facts.phase, facts.pending_oom) == ("running", "restarting", None)


def test_read_facts_counts_wrong_typed_lines_and_keeps_the_step_before_a_torn_one(tmp_path):
    path = tmp_path / "events.jsonl"
    lines = [protocol.to_json_line(event) for event in [started(), *steps(1, 3)]]
    lines.insert(1, '{"type": "run_started", "time": 1, "config": "notadict"}\n')
    lines.append('{"type": "step", "time": 1, "st\n')  # a crash mid-write, then a new worker
    lines.append(protocol.to_json_line(Log(time=110.0, message="hi")))
    path.write_text("".join(lines))
    facts = read_facts(path)
    assert facts.unreadable_lines == 2
    assert (facts.step, facts.last_loss, facts.preset) == (3, 1 / 3, "lenet5-digits")


def test_a_log_line_that_names_a_restart_marks_it_whatever_its_wording():
    facts = folded([started(), Log(time=101.0, message="worker going down", restarting="mixed-precision")])
    assert facts.phase == "restarting" and "mixed-precision" in facts.reason
    older = folded([started(), Log(time=101.0, message="applying remedy halve-batch: restarting")])
    assert older.phase == "restarting" and "halve-batch" in older.reason  # a run an older worker wrote


def test_other_log_lines_change_nothing_and_an_ended_run_never_restarts():
    facts = folded([started(), Log(time=101.0, message="hello")])
    assert facts.phase == "loading"
    facts.apply([Finished(time=102.0), Log(time=103.0, message="x", restarting="halve-batch")])
    assert (facts.status, facts.phase) == ("finished", "ended")
