"""tui.widgets.diffed: only the cells that changed are repainted."""

from rich.style import Style
from rich.text import Text
from textual.app import App
from textual.geometry import Region
from textual.strip import Strip

from tui.widgets.diffed import DiffedWidget, changed_regions, changed_spans
from tui.widgets.loss_chart import nice_ceiling, nice_limits, nice_ticks, tick_label


def line(text: str, style: str = "") -> Strip:
    from rich.segment import Segment

    return Strip([Segment(text, Style.parse(style) if style else None)], len(text))


def test_equal_lines_have_no_spans():
    assert list(changed_spans(line("step 1,234"), line("step 1,234"))) == []


def test_a_changed_number_is_one_span():
    before, after = line("epoch 3  step 1,234  ETA"), line("epoch 3  step 1,240  ETA")
    assert list(changed_spans(before, after)) == [(17, 19)]


def test_nearby_changes_merge_and_distant_ones_do_not():
    before, after = line("a" * 40), line("b" + "a" * 3 + "b" + "a" * 30 + "b" + "a" * 4)
    assert list(changed_spans(before, after, gap=6)) == [(0, 5), (35, 36)]


def test_a_style_change_counts_as_a_change():
    assert list(changed_spans(line("running", "green"), line("running", "red"))) == [(0, 7)]


def test_regions_are_per_line():
    old = [line("abc"), line("def")]
    new = [line("abc"), line("dXf")]
    assert list(changed_regions(old, new)) == [Region(1, 1, 1, 1)]


class One(App):
    def compose(self):
        yield DiffedWidget(id="w")


async def test_a_widget_repaints_only_what_changed():
    app = One()
    async with app.run_test(size=(40, 5)) as pilot:
        widget = app.query_one(DiffedWidget)
        widget.show(Text("step 100\nloss 0.5"))
        await pilot.pause()
        full = widget.cells_refreshed
        widget.show(Text("step 101\nloss 0.5"))
        await pilot.pause()
        assert widget.cells_refreshed - full == 1
        assert widget.render().plain == "step 101\nloss 0.5"


def test_axes_move_in_steps():
    assert [nice_ceiling(v) for v in (7, 133, 350, 999, 1001, 12_345)] == [
        8,
        150,
        400,
        1000,
        1200,
        15_000,
    ]
    assert nice_limits(0.05, 2.4) == (0.0, 2.5)
    assert nice_limits(0.049, 2.41) == (0.0, 2.5)  # a little lower loss: the same axis
    assert nice_limits(1e-3, 2.4, log_scale=True) == (1e-3, 10)
    assert nice_ticks(0, 400, 8) == [0, 100, 200, 300, 400]
    assert [tick_label(t) for t in nice_ticks(0, 15_000, 8)] == [
        "0",
        "2.5k",
        "5k",
        "7.5k",
        "10k",
        "12.5k",
        "15k",
    ]
