"""Text that fits 80 columns on purpose: whole words, whole parts, readable log ticks,
an ended run's validation accuracy in the header, the live runs' notice."""

import math

import pytest
from rich.text import Text

from engine.run.facts import RunFacts
from engine.run.protocol import EpochEnd, Finished, Oom
from tests.fake_engine import make_preset, oom_event, run_started, training_events
from tui.fit import clip_to_rows, clip_words, fit_parts
from tui.live_runs import describe, launch_notice, shares_devices
from tui.widgets.header import describe_run
from tui.widgets.loss_chart import log_tick_label, log_ticks

OOM_REASON_RUN = "20261202-101500-lenet5-digits"


def test_clip_words_ends_at_a_word_with_an_ellipsis():
    assert clip_words("effective batch stays 32", 40) == "effective batch stays 32"
    assert clip_words("effective batch stays 32; BatchNorm", 22) == "effective batch stays…"
    assert clip_words("effective batch stays 32; BatchNorm", 27) == "effective batch stays 32…"  # no ";…"


def test_clip_to_rows_keeps_whole_words_in_the_rows():
    text = "LeNet-5 on scikit-learn digits: seconds on a CPU"
    assert clip_to_rows(text, 30, 2) == text
    one = clip_to_rows(text, 30, 1)
    assert one == "LeNet-5 on scikit-learn…" and len(one) <= 30


def test_fit_parts_leaves_out_the_least_important_first():
    parts = [(9, Text("run-001")), (1, Text("1,280 img/s")), (10, Text("waiting")), (4, Text("step 250"))]
    assert fit_parts(parts, 80).plain == "run-001  1,280 img/s  waiting  step 250"
    assert fit_parts(parts, 30).plain == "run-001  waiting  step 250"
    assert fit_parts(parts, 18).plain == "run-001  waiting"


@pytest.mark.parametrize(
    ("value", "label"),
    [(1e-3, "1e-3"), (3e-4, "3e-4"), (2e-5, "2e-5"), (0.01, "0.01"), (0.3, "0.3"), (1.0, "1"), (20.0, "20"),
     (1e5, "1e5")],
)
def test_log_tick_labels_are_short(value, label):
    assert log_tick_label(value) == label


def test_log_ticks_are_decades_with_2_and_5_while_there_is_room():
    assert log_ticks(0.1, 1.0, 6) == [0.1, 0.2, 0.5, 1.0]
    assert log_ticks(1e-3, 10.0, 5) == [1e-3, 1e-2, 0.1, 1.0, 10.0]
    ticks = log_ticks(1e-8, 1e4, 4)
    assert len(ticks) <= 4 and all(math.log10(t) == round(math.log10(t)) for t in ticks)


def _finished_run() -> RunFacts:
    config = make_preset("lenet5-digits", train={"batch_size": 64, "epochs": 3}).config
    events = [run_started(OOM_REASON_RUN, config), *training_events(300)]
    facts = RunFacts(run_id=OOM_REASON_RUN).apply(events)
    facts.fold(EpochEnd(time=2e9, epoch=3, step=300, val_loss=0.3, val_accuracy=0.91))  # below the best
    facts.fold(Finished(time=2e9, reason="completed"))
    return facts


def test_a_finished_run_shows_its_last_and_best_validation_accuracy():
    facts = _finished_run()
    line = describe_run(facts, 120).plain
    assert "finished" in line and "val acc 0.910" in line
    assert f"best {facts.best_val_accuracy:.3f} (epoch {facts.best_epoch})" in line
    assert "img/s" not in line  # a figure of the run while it trained


def test_at_80_columns_the_header_leaves_out_whole_parts_and_keeps_the_accuracy():
    facts = _finished_run()
    line = describe_run(facts, 78).plain
    assert len(line) <= 78 and "val acc 0.910" in line
    whole = describe_run(facts, 1000).plain.split()
    assert all(word in whole for word in line.removeprefix("…").split())  # no word cut in two


def test_a_waiting_header_at_80_columns_cuts_no_word():
    config = make_preset("lenet5-digits", train={"batch_size": 256}).config
    facts = RunFacts(run_id="run-001").apply([run_started("run-001", config), *training_events(250)])
    facts.fold(oom_event(251))
    assert isinstance(facts.pending_oom, Oom)
    line = describe_run(facts, 78).plain
    assert len(line) <= 78
    assert line.endswith("out of memory at step 251")  # the reason whole; img/s left out first
    assert "img/s" not in line


def test_the_launch_notice_lists_each_live_run_and_the_attach_key():
    config = make_preset("lenet5-digits").config
    facts = RunFacts(run_id="run-001").apply([run_started("run-001", config), *training_events(150)])
    notice = launch_notice([facts])
    assert "1 run trains on this machine" in notice
    assert "run-001\nlenet5-digits  running, epoch 2/10" in notice
    assert "A attaches" in notice
    assert describe(facts) == "run-001  lenet5-digits  running, epoch 2/10"


def test_runs_pinned_to_different_devices_do_not_share_one():
    live = RunFacts(run_id="r1", config={"train": {"devices": ["/gpu:0"]}})
    anywhere = make_preset("a").config
    on_gpu1 = make_preset("b", train={"devices": ["GPU:1"]}).config
    on_gpu0 = make_preset("c", train={"devices": ["/device:GPU:0"]}).config
    assert shares_devices(anywhere, live)  # every GPU (or the CPU) includes the live one's
    assert not shares_devices(on_gpu1, live)
    assert shares_devices(on_gpu0, live)
    assert shares_devices(on_gpu1, RunFacts(run_id="r2", config={"train": {"devices": []}}))
