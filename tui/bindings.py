"""The main screen's keys: the app's own, one per remedy in the catalogue, and the chart's.

:data:`APP_BINDINGS` is :attr:`tui.app.ConvdeckApp.BINDINGS`; the remedy keys come
from :mod:`engine.remedies` through :func:`tui.widgets.remedy_bar.remedy_bindings`.
:data:`MAIN_SCREEN_ACTIONS` are the actions that do not apply while another
screen is on top (see ``ConvdeckApp.check_action``).
"""

from __future__ import annotations

from textual.binding import Binding

from tui.chart_keys import chart_bindings
from tui.widgets.loss_chart import SMOOTHINGS, VIEWS
from tui.widgets.remedy_bar import remedy_bindings

# | key     | action            | applies when                          |
# |---------|-------------------|---------------------------------------|
# | enter   | start             | no live run; a valid config           |
# | space   | pause / resume    | a running / a paused run              |
# | x       | stop (confirm)    | a live run                            |
# | (each)  | a remedy          | a live run; keys in engine.remedies   |
# | A       | attach            | no run shown; a run is live           |
# | d       | detach            | a run is shown                        |
# | s l t v | chart settings    | always                                |
APP_BINDINGS: list[Binding] = [
    Binding("enter", "start", "Start", tooltip="Start a run of the chosen preset", id="start"),
    # One key, two entries: the footer names what space does now (and fits 80 columns).
    Binding("space", "pause", "Pause", tooltip="Pause the run (space again resumes it)", id="pause"),
    Binding("space", "resume", "Resume", tooltip="Resume the paused run", id="resume"),
    Binding("x", "stop", "Stop", tooltip="Stop the run (asks first)", id="stop"),
    Binding("d", "detach", "Detach", tooltip="Stop watching; the run keeps going", id="detach"),
    *remedy_bindings(),  # one per remedy in engine.remedies
    Binding("question_mark,f1", "help", "Help", tooltip="Keys and how it works", id="help"),
    Binding("q", "quit_app", "Quit", tooltip="Quit (asks about a live run)", id="quit"),
    # The filter line says "/ filter presets" itself: the footer's room goes to other keys.
    Binding("slash", "filter", "Filter", show=False, tooltip="Filter the presets", id="filter"),
    Binding(
        "ctrl+s",
        "save_preset",
        "Save preset",
        tooltip="Save the config pane as a user preset",
        id="save-preset",
    ),
    Binding("o", "runs", "Runs", tooltip="List runs, open one, overlay two", id="runs"),
    Binding(
        "A",
        "attach_live",
        "Attach",
        show=False,  # the header and the chart say it when a run trains here
        tooltip="Watch a run that trains on this machine (the only one, or pick one)",
        id="attach-live",
    ),
    Binding("e", "eval", "Eval", show=False, tooltip="Confusion matrix, per-class figures, mistakes", id="eval"),
    Binding(
        "Q",
        "queue_preset",
        "Queue",
        tooltip="Queue the chosen preset with the config pane's values",
        id="queue-preset",
    ),
    Binding(
        "L",
        "lr_find",
        "LR find",
        show=False,  # no room in the footer at 80 columns; help and the palette say it
        tooltip="Learning-rate range test of the config pane's settings; Enter there puts its rate in the pane",
        id="lr-find",
    ),
    Binding(
        "u",
        "queue",
        "Queue list",
        show=False,  # the footer has no room at 80 columns; help, the palette and Q's notice say it
        tooltip="The run queue: reorder, remove, pause",
        id="queue",
    ),
    *chart_bindings("chart", show=False),
]

MAIN_SCREEN_ACTIONS = frozenset(
    {
        "start",
        "pause_resume",
        "pause",
        "resume",
        "stop",
        "remedy",
        "offered_remedy",
        "detach",
        "filter",
        "save_preset",
        "runs",
        "attach_live",
        "eval",
        "queue_preset",
        "queue",
        "lr_find",
        "smoothing",
        "log_scale",
        "x_axis",
        "view",
    }
)

PALETTE: list[tuple[str, str, str]] = [
    ("Start run", "Start the chosen preset", "start"),
    ("Pause / resume", "Pause or resume the run", "pause_resume"),
    ("Stop run", "Checkpoint and stop the run", "stop"),
    ("Detach", "Stop watching; the run keeps going", "detach"),
    ("Runs", "List runs, open one, overlay two", "runs"),
    ("Attach to a live run", "Watch a run that trains on this machine", "attach_live"),
    ("Queue preset", "Queue the chosen preset with the config pane's values", "queue_preset"),
    ("Queue", "The run queue: reorder, remove, pause", "queue"),
    ("LR find", "Learning-rate range test; its suggestion goes into the config pane", "lr_find"),
    ("Save preset", "Save the config pane as a user preset", "save_preset"),
    ("Chart: next view", f"One of {', '.join(VIEWS.values())}", "view"),
    ("Chart: smoothing", f"Cycle {', '.join(map(str, SMOOTHINGS))}", "smoothing"),
    ("Chart: log scale", "Linear or log y axis", "log_scale"),
    ("Chart: x axis", "Step, epoch or wall time", "x_axis"),
    ("Help", "Keys and how convdeck works", "help"),
]
"""The command palette's entries: (title, help, action); the app calls ``action_<action>``.

The remedies follow, one per entry in :mod:`engine.remedies`; only the entries
whose action applies now are listed (see ``ConvdeckApp.get_system_commands``)."""
