"""The README tour's screenshots-as-text: the Eval view of a real run and the LR-find curve, at 80x24.

The app runs headless (``App.run_test``), as the tests run it, but on the real
engine: the Eval view is of a run under ``$CONVDECK_HOME`` (train one first),
and the LR-find screen runs the real range test in its throwaway process, or
replays a curve that ``convdeck lr-find PRESET --json`` printed (``--curve``).
Each screen is printed as plain text (the same render as Textual's SVG
screenshot, exported as text), pictures as half-blocks.

Usage (a fresh home, a 3-epoch run, then both screens)::

    export CONVDECK_HOME=$(mktemp -d)
    python -m tui.cli run lenet5-digits --set train.epochs=3
    python -m tui.cli lr-find lenet5-digits --json > curve.json
    python benchmarks/tour_screens.py --run latest --curve curve.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import time
from pathlib import Path

from rich.console import Console
from textual.app import App

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("CONVDECK_IMAGES", "halfcell")  # text has no terminal graphics

from engine.gpu import RecordedSource  # noqa: E402
from engine.presets import load_preset  # noqa: E402
from engine.run import client  # noqa: E402
from engine.run.lr_find import CurvePoint, conclude  # noqa: E402
from tui.app import ConvdeckApp  # noqa: E402
from tui.screens.eval import EvalScreen  # noqa: E402
from tui.screens.lr_find import LrFindScreen  # noqa: E402

SIZE = (80, 24)
NO_GPU = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "nvml" / "no_gpu.json"


def screen_text(app: App) -> str:
    """The screen as plain text: the render Textual's ``export_screenshot`` makes, exported as text."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, record=True)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return "\n".join(line.rstrip() for line in console.export_text().splitlines())


async def until(pilot, condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the screen did not get there in time")
        await pilot.pause(0.05)


async def eval_view(run_ref: str) -> tuple[str, str]:
    """The Eval view of ``run_ref`` as ``e`` opens it from the main screen watching that run, then its ``t`` table."""
    run_id = client.list_runs()[-1].run_id if run_ref == "latest" else client.find_run(run_ref).run_id
    app = ConvdeckApp(gpu_source=RecordedSource.from_file(NO_GPU), gpu_interval=3600, attach=run_id)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.run_link is not None and app.presets_loaded, 60)
        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, EvalScreen) and app.screen.report is not None, 60)
        await pilot.pause(0.5)
        matrix = screen_text(app)
        await pilot.press("t")  # the per-class table, worst first
        await pilot.pause(0.5)
        return matrix, screen_text(app)


class _Host(App):
    def __init__(self, screen: LrFindScreen) -> None:
        super().__init__()
        self.lr_screen = screen

    def on_mount(self) -> None:
        self.push_screen(self.lr_screen)


def _replay(curve_file: Path):
    """A range test that streams the curve ``convdeck lr-find --json`` printed, and concludes as the real one."""
    data = json.loads(curve_file.read_text())

    def find(config, steps, start, end, *, on_point, on_start):
        points = [CurvePoint.from_report(point) for point in data["points"]]
        for point in points:
            on_point(point)
        return conclude(config, points, data["stopped"], data["steps"], data["start"], data["end"],
                        data["seconds"], data.get("startup_seconds"))  # fmt: skip

    return find


async def lr_find_screen(preset: str, curve_file: Path | None) -> str:
    """The LR-find screen of ``preset`` once the test has ended (the real test, or ``curve_file`` replayed)."""
    extra = {"find": _replay(curve_file)} if curve_file else {}
    screen = LrFindScreen(load_preset(preset), **extra)
    app = _Host(screen)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: screen.test is not None or not screen.running, 300)
        await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.5)
        return screen_text(app)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="latest", help="the run whose Eval view to show (default: the newest)")
    parser.add_argument("--preset", default="lenet5-digits", help="the preset of the LR-find screen")
    parser.add_argument("--curve", type=Path, help="replay this `convdeck lr-find --json` output instead of a test")
    args = parser.parse_args()
    matrix, classes = asyncio.run(eval_view(args.run))
    for title, text in (
        ("Eval view", matrix),
        ("Eval view, t: the per-class table", classes),
        ("LR-find screen", asyncio.run(lr_find_screen(args.preset, args.curve))),
    ):
        print(f"--- {title} ({SIZE[0]}x{SIZE[1]}) ---\n{text}\n")


if __name__ == "__main__":
    main()
