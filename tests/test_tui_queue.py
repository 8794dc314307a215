"""The queue in the TUI: Q queues a preset, the queue screen (u) lists, reorders, removes, pauses, opens.

Each test has its own CONVDECK_HOME holding a real queue file; no runner
is started (the link's runner start is a fake that counts its calls), and
a run's ETA comes from a fake so no worker is needed either.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from conftest import make_run, until
from textual.widgets import DataTable, Input, OptionList

from engine.config import validate_config
from engine.gpu import RecordedSource
from engine.run.queue import CLAIMED, ENDED, LAUNCHED, RunQueue
from tests.fake_engine import FakeEngine, FakeRun, make_preset
from tui.app import ConvdeckApp
from tui.queue_link import QueueLink, QueueView, overrides_between, run_eta
from tui.screens.queue import QueueScreen
from tui.widgets.queue_badge import QueueBadge, queue_line, short_duration

NVML = Path(__file__).parent / "fixtures" / "nvml"
LIVE_RUN = "20250101-120000-lenet5-digits-ab12"
ENDED_RUN = "20250101-110000-resnet18-cifar10-cd34"


class FakeRunner:
    """Stands in for ``start_runner``: counts the starts, answers a pid."""

    def __init__(self) -> None:
        self.starts = 0

    def __call__(self, home: Path | None) -> int:
        self.starts += 1
        return 4242


def make_link(runner: FakeRunner | None = None, eta: float | None = 754.0) -> QueueLink:
    # A still clock: the ETA is the fake's, not counted down, so pictures are stable.
    return QueueLink(start_runner=runner or FakeRunner(), eta_of=lambda run_dir: eta, clock=lambda: 100.0)


def make_app(link: QueueLink, engine: FakeEngine | None = None, gpu: str = "no_gpu") -> ConvdeckApp:
    app = ConvdeckApp(
        engine=engine or FakeEngine(),
        gpu_source=RecordedSource.from_file(NVML / f"{gpu}.json"),
        gpu_interval=3600,
        chart_data_interval=0.0,
    )
    app.queue_link = link
    return app


def fill_queue(home: Path) -> dict[str, int]:
    """A live run, a waiting sweep trial, two waiting presets and an ended run; their entry ids."""
    queue = RunQueue(home)
    live = queue.add("lenet5-digits", ["train.batch_size=32"])
    ended = queue.add("resnet18-cifar10")
    trial = queue.add("lenet5-digits", ["train.learning_rate=0.01"], sweep="lr", trial=2, note="sweep lr trial 2")
    vgg = queue.add("vgg16-cifar10")
    alexnet = queue.add("alexnet-cifar10")
    queue.claim_next(lambda entry: LIVE_RUN)
    queue.mark(live.id, LAUNCHED)
    make_run(home, LIVE_RUN)
    queue.move(ended.id, 1)
    queue.claim_next(lambda entry: ENDED_RUN)
    queue.mark(ended.id, ENDED, outcome="finished")
    queue.close()
    return {"live": live.id, "ended": ended.id, "trial": trial.id, "vgg": vgg.id, "alexnet": alexnet.id}


def waiting_ids(home: Path) -> list[int]:
    queue = RunQueue(home)
    try:
        return [entry.id for entry in queue.entries() if entry.state == "queued"]
    finally:
        queue.close()



async def open_queue(pilot, app) -> QueueScreen:
    await until(pilot, lambda: app.presets_loaded)
    await pilot.press("u")
    await until(pilot, lambda: isinstance(app.screen, QueueScreen) and app.screen.view is not None)
    return app.screen


def row_text(screen: QueueScreen, entry_id: int) -> list[str]:
    return [str(value) for value in screen.query_one(DataTable).get_row(str(entry_id))]


def notices(app) -> list[str]:
    return [str(n.message) for n in app._notifications]


# -- Q on a preset ------------------------------------------------------------------


async def test_shift_q_queues_the_preset_with_the_panes_changes_as_settings(convdeck_home):
    runner = FakeRunner()
    app = make_app(make_link(runner))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.presets_loaded)
        app.query_one("#field-train-batch-size", Input).value = "32"
        app.query_one("#field-train-epochs", Input).value = "2"
        app.query_one("#preset-options", OptionList).focus()
        await pilot.press("Q")
        await until(pilot, lambda: runner.starts == 1)
        [entry] = RunQueue(convdeck_home).entries()
        assert entry.preset == "lenet5-digits"
        assert entry.overrides == ["train.batch_size=32", "train.epochs=2"]
        assert entry.state == "queued"
        await until(pilot, lambda: any("Queued lenet5-digits" in n for n in notices(app)))
        assert app.state is None  # queued, not started


async def test_q_in_a_field_types_and_an_invalid_config_is_not_queued(convdeck_home):
    runner = FakeRunner()
    app = make_app(make_link(runner))
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.presets_loaded)
        field = app.query_one("#field-train-batch-size", Input)
        field.focus()
        await pilot.press("Q")
        assert field.value == "Q"  # typed over the selected "64": in a field a letter is text
        app.query_one("#preset-options", OptionList).focus()
        await pilot.press("Q")
        await until(pilot, lambda: any(n.startswith("Not queued: ") for n in notices(app)))
        await pilot.pause(0.1)
        assert runner.starts == 0
        assert not (convdeck_home / "queue.sqlite").exists()


def test_overrides_are_the_fields_that_differ_as_set_reads_them():
    preset = validate_config({"name": "lenet5-digits", "train": {"batch_size": 64}})
    edited = validate_config(
        {
            "name": "lenet5-digits",
            "train": {"batch_size": 32, "mixed_precision": True, "learning_rate": 0.0005},
            "data": {"dataset": "tfds:cifar10"},
        }
    )
    assert sorted(overrides_between(preset, edited)) == [
        'data.dataset="tfds:cifar10"',
        "train.batch_size=32",
        "train.learning_rate=0.0005",
        "train.mixed_precision=true",
    ]
    assert overrides_between(preset, preset) == []


def test_queueing_refuses_what_the_runner_could_not_load(convdeck_home):
    from engine.errors import ConfigError

    runner = FakeRunner()
    link = make_link(runner)
    with pytest.raises(ConfigError, match="batch_size"):
        link.add("lenet5-digits", ["train.batch_size=-4"])
    with pytest.raises(ConfigError, match="unknown preset"):
        link.add("no-such-preset", [])
    assert runner.starts == 0 and not (convdeck_home / "queue.sqlite").exists()


# -- the queue screen ---------------------------------------------------------------


async def test_the_queue_screen_lists_entries_and_trials_with_state_and_eta(convdeck_home):
    ids = fill_queue(convdeck_home)
    app = make_app(make_link())
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_queue(pilot, app)
        table = screen.query_one(DataTable)
        order = [str(table.get_row_at(i)[1]) for i in range(table.row_count)]
        assert order == [str(ids[k]) for k in ("live", "trial", "vgg", "alexnet", "ended")]
        assert row_text(screen, ids["live"])[:5] == ["-", str(ids["live"]), "lenet5-digits", "launched", "12m"]
        assert row_text(screen, ids["trial"])[:5] == ["1", str(ids["trial"]), "lenet5-digits · lr #2", "queued", "-"]
        assert row_text(screen, ids["ended"])[3] == "finished"
        title = str(screen.query_one("#queue-title").render())
        assert "queue 3 waiting · 12m left on 1 running" in title and "no runner" in title
        assert LIVE_RUN in str(screen.query_one("#queue-detail").render())


async def test_move_keys_reorder_the_waiting_entries_and_the_cursor_follows(convdeck_home):
    ids = fill_queue(convdeck_home)
    app = make_app(make_link())
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_queue(pilot, app)
        await pilot.press("down")  # the trial, first of the waiting ones
        await pilot.press("J")
        expected = [ids["vgg"], ids["trial"], ids["alexnet"]]
        await until(pilot, lambda: waiting_ids(convdeck_home) == expected)
        await until(pilot, lambda: screen._current() is not None and screen._current().id == ids["trial"])
        await pilot.press("shift+down")
        expected = [ids["vgg"], ids["alexnet"], ids["trial"]]
        await until(pilot, lambda: waiting_ids(convdeck_home) == expected)
        await pilot.press("K", "K")
        expected = [ids["trial"], ids["vgg"], ids["alexnet"]]
        await until(pilot, lambda: waiting_ids(convdeck_home) == expected)
        await until(pilot, lambda: row_text(screen, ids["trial"])[0] == "1")


async def test_a_started_entry_does_not_move_or_go_and_says_why_in_one_line(convdeck_home):
    ids = fill_queue(convdeck_home)
    app = make_app(make_link())
    async with app.run_test(size=(100, 30)) as pilot:
        await open_queue(pilot, app)
        await pilot.press("x")  # the cursor is on the live run
        await until(pilot, lambda: any("is running as" in n for n in notices(app)))
        await pilot.press("J")
        await until(pilot, lambda: any("has already started" in n for n in notices(app)))
        assert all("\n" not in n for n in notices(app))
        queue = RunQueue(convdeck_home)
        assert queue.get(ids["live"]).state == LAUNCHED
        assert waiting_ids(convdeck_home) == [ids["trial"], ids["vgg"], ids["alexnet"]]


async def test_x_removes_a_waiting_entry(convdeck_home):
    ids = fill_queue(convdeck_home)
    app = make_app(make_link())
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_queue(pilot, app)
        await pilot.press("down", "down", "x")
        await until(pilot, lambda: waiting_ids(convdeck_home) == [ids["trial"], ids["alexnet"]])
        await until(pilot, lambda: f"removed entry {ids['vgg']} (vgg16-cifar10)" in notices(app))
        await until(pilot, lambda: screen.query_one(DataTable).row_count == 4)
        assert screen._current().id == ids["alexnet"]  # the one below takes its place


async def test_p_pauses_the_queue_and_resumes_it_with_a_runner(convdeck_home):
    fill_queue(convdeck_home)
    runner = FakeRunner()
    app = make_app(make_link(runner))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_queue(pilot, app)
        await pilot.press("p")
        await until(pilot, lambda: RunQueue(convdeck_home).paused())
        await until(pilot, lambda: "queue paused" in str(screen.query_one("#queue-title").render()))
        assert runner.starts == 0
        await pilot.press("p")
        await until(pilot, lambda: not RunQueue(convdeck_home).paused())
        await until(pilot, lambda: "queue resumed (runner pid 4242)" in notices(app))
        assert runner.starts == 1


async def test_enter_opens_an_entrys_run_like_the_runs_screen(convdeck_home):
    fill_queue(convdeck_home)
    run = FakeRun(LIVE_RUN, validate_config({"name": "lenet5-digits"}))
    app = make_app(make_link(), engine=FakeEngine(runs=[run]))
    async with app.run_test(size=(100, 30)) as pilot:
        await open_queue(pilot, app)
        await pilot.press("down", "enter")  # a waiting trial: nothing to open yet
        await until(pilot, lambda: any("has not started" in n for n in notices(app)))
        assert isinstance(app.screen, QueueScreen)
        await pilot.press("up", "enter")
        await until(pilot, lambda: app.state is not None and app.state.run_id == LIVE_RUN)
        assert not isinstance(app.screen, QueueScreen)


async def test_escape_goes_back(convdeck_home):
    app = make_app(make_link())
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_queue(pilot, app)
        assert "queue empty" in str(screen.query_one("#queue-title").render())
        await pilot.press("escape")
        assert not isinstance(app.screen, QueueScreen)


class SlowLink(QueueLink):
    """Reads slowly and records how many reads overlap."""

    def __init__(self) -> None:
        super().__init__(start_runner=FakeRunner())
        self.reading = self.most = self.reads = 0
        self._count = threading.Lock()

    def read(self) -> QueueView:
        with self._count:
            self.reading += 1
            self.most = max(self.most, self.reading)
        time.sleep(0.05)
        with self._count:
            self.reading -= 1
            self.reads += 1
        return QueueView()


async def test_refreshes_never_pile_up(convdeck_home):
    link = SlowLink()
    app = make_app(link)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: app.query_one(QueueBadge).reads >= 1)  # the badge's first read is done
        app.push_screen(QueueScreen(link, interval=0.001))
        await until(pilot, lambda: link.reads >= 6)
        assert link.most == 1  # the badge under the screen waits; the screen re-arms after each read


# -- the header ---------------------------------------------------------------------


async def test_the_header_shows_the_queue(convdeck_home):
    fill_queue(convdeck_home)
    app = make_app(make_link())
    async with app.run_test(size=(120, 30)) as pilot:
        badge = app.query_one(QueueBadge)
        await until(pilot, lambda: badge.reads >= 1)
        assert badge.has_class("-shown")
        assert str(badge.render()) == "queue 3 waiting · 12m left on 1 running"


async def test_the_header_has_no_queue_part_without_a_queue(convdeck_home):
    app = make_app(make_link())
    async with app.run_test(size=(100, 30)) as pilot:
        badge = app.query_one(QueueBadge)
        await until(pilot, lambda: badge.reads >= 1)
        assert not badge.has_class("-shown")
        assert not (convdeck_home / "queue.sqlite").exists()  # reading made no queue file


def entry(state: str, run_id: str | None = None, entry_id: int = 0):
    from engine.run.queue import Entry

    return Entry(id=entry_id, position=entry_id, preset="p", state=state, run_id=run_id)


def test_queue_line_counts_waiting_and_gives_the_live_runs_time_left():
    view = QueueView(
        entries=[entry("queued", entry_id=1), entry(LAUNCHED, "a", 2), entry(CLAIMED, "b", 3), entry(ENDED, "c", 4)],
        etas={"a": 754.0, "b": None},
    )
    assert queue_line(view) == "queue 1 waiting · 12m left on 2 running"
    assert queue_line(view, width=30) == "queue 1 · 2 running 12m left"
    view.etas = {}
    assert queue_line(view) == "queue 1 waiting · 2 running"
    view.paused = True
    assert queue_line(view) == "queue paused · 1 waiting · 2 running"
    assert queue_line(QueueView(entries=[entry(ENDED, "c")])) == ""
    assert [short_duration(s) for s in (45, 754, 7500)] == ["45s", "12m", "2h05m"]


def test_an_eta_is_read_again_only_after_a_while_and_counted_down_between(convdeck_home):
    fill_queue(convdeck_home)
    now, asked = [0.0], []

    def eta_of(run_dir: Path) -> float:
        asked.append(run_dir.name)
        return 600.0

    link = QueueLink(start_runner=FakeRunner(), eta_of=eta_of, clock=lambda: now[0])
    assert link.read().etas == {LIVE_RUN: 600.0}
    now[0] = 10.0
    assert link.read().etas == {LIVE_RUN: 590.0}
    now[0] = 20.0
    assert link.read().etas == {LIVE_RUN: 600.0}
    assert asked == [LIVE_RUN, LIVE_RUN]


def test_run_eta_knows_none_for_a_run_that_is_not_running(convdeck_home):
    run_dir = make_run(convdeck_home, "run-1", [{"type": "run_started"}, {"type": "finished", "reason": "completed"}])
    assert run_eta(run_dir) is None


def test_every_queue_binding_has_a_description_tooltip_and_id():
    from textual.binding import Binding

    bindings = [*QueueScreen.BINDINGS, *(b for b in ConvdeckApp.BINDINGS if "queue" in b.action)]
    assert len(bindings) == 9
    for binding in bindings:
        assert isinstance(binding, Binding)
        assert binding.description and binding.tooltip and binding.id, binding


# -- the picture --------------------------------------------------------------------


def test_queue_screen_80x24(snap_compare, convdeck_home):
    fill_queue(convdeck_home)
    engine = FakeEngine(presets=[make_preset("lenet5-digits", train={"batch_size": 64, "epochs": 5})])

    async def run_before(pilot) -> None:
        await open_queue(pilot, pilot.app)
        await pilot.pause(0.1)

    assert snap_compare(make_app(make_link(), engine=engine), terminal_size=(80, 24), run_before=run_before)
