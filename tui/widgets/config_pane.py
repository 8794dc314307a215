"""The config pane: the few fields people change, validated as they type.

Every edit is laid over the chosen preset and checked with
``engine.config.validate_config``, so the error shown inline is the one the
worker would raise. While a run is on screen the pane shows the run's
config as it trains now (a remedy's change shows up here), read-only, and
keeps showing it once the run has ended; when a preset is chosen again
(the list gets the focus or its cursor moves) the edits made to each
preset come back, so a second run starts from them.

``engine.config`` (pydantic) is imported on the first preset shown, never
at app import: the first frame does not wait for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widget import Widget
from textual.widgets import Checkbox, Input, Label, Select, Static

from tui.fit import clip_to_rows
from tui.messages import ConfigEdited, StartRequested

if TYPE_CHECKING:
    from engine.config import RunConfig

TEXT_FIELDS = {
    "train.batch_size": "batch size",
    "train.learning_rate": "learning rate",
    "train.epochs": "epochs",
    "data.dataset": "dataset",
}
PLAIN_STRING_FIELDS = ("data.dataset",)


def _field_id(dotted: str) -> str:
    return "field-" + dotted.replace(".", "-").replace("_", "-")


def _get(data: dict, dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _set(data: dict, dotted: str, value: Any) -> None:
    *sections, last = dotted.split(".")
    node = data
    for part in sections:
        node = node.setdefault(part, {})
    node[last] = value


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "" if value is None else str(value)


class ConfigPane(VerticalScroll, can_focus=False):
    """Editable fields of the chosen preset, with the config's own errors inline.

    Not focusable itself: Tab lands on its first field, not on the scroller.
    """

    BORDER_TITLE = "Config"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.preset: Any = None
        self.config: RunConfig | None = None
        self.error: str | None = None
        self._filling = False
        self._last_data: dict | None = None
        self._policies_listed = False
        self._edits: dict[str, dict] = {}
        """The values typed for each preset (by name), restored when it is shown again."""
        self.fields_ready = False
        self._run_shown: tuple[str, dict, str] | None = None
        self._about: tuple[str, str] | None = None
        self._waiting: tuple[Any, tuple] | None = None
        """A preset or live config to show once the fields are mounted."""

    def compose(self) -> ComposeResult:
        yield Static(id="config-error")
        yield Static(Text("reading presets…", "dim"), id="config-about")

    def on_mount(self) -> None:
        # The fields are half the app's widgets and nothing to show before a preset is
        # read: mounted after the first frame, they take ~80 ms off it.
        self.call_after_refresh(self._mount_fields)

    async def _mount_fields(self) -> None:
        await self.mount_all(self._fields())
        if not self.app.is_running:
            return  # the app quit while the fields mounted (a test that ends at once)
        self.fields_ready = True
        if self._waiting is not None:
            show, args = self._waiting
            self._waiting = None
            show(*args)

    def _fields(self) -> list[Widget]:
        fields: list[Widget] = [
            Horizontal(
                Label(label, classes="field-label"),
                Input(id=_field_id(dotted), compact=True, name=dotted),
                classes="field",
            )
            for dotted, label in TEXT_FIELDS.items()
        ]
        # The policies come from engine.remedies with the first preset (see _fill).
        on_oom = Select(
            [("ask", "ask")],
            id=_field_id("train.on_oom"),
            allow_blank=False,
            compact=True,
            value="ask",
        )
        return fields + [
            Horizontal(Label("on OOM", classes="field-label"), on_oom, classes="field"),
            Checkbox("mixed precision", id=_field_id("train.mixed_precision"), compact=True),
            Horizontal(
                Label("save as", classes="field-label"),
                Input(id="save-name", compact=True, placeholder="name (ctrl+s)"),
                classes="field",
            ),
        ]

    def show_preset(self, preset: Any) -> None:
        """Fill the fields from ``preset`` and the edits made to it; a broken one shows why."""
        if not self.fields_ready:
            self._waiting = (self.show_preset, (preset,))
            return
        self._remember_edits()
        self.preset = preset
        self._run_shown = None
        self._last_data = None
        self.set_class(False, "-live")
        if preset.error or preset.config is None:
            self._show_about(preset.name, "")
            self._show_error(preset.error or "the preset did not load")
            self.config = None
            self.post_message(ConfigEdited(None, self.error))
            return
        self._show_about(preset.name, preset.description)
        edits = self._edits.get(preset.name)
        self._fill(edits or preset.config.model_dump(mode="json"))
        save_name = (edits or {}).get("save_as") or f"{preset.name}-mine"
        self.query_one("#save-name", Input).value = save_name
        self.validate()

    @property
    def shows_run(self) -> bool:
        """True while the pane shows a run's config (see :meth:`show_live`), not a preset to edit."""
        return self.has_class("-live")

    def show_live(self, name: str, config: dict, note: str = "live") -> None:
        """Show a run's config (``RunFacts.config``: remedies included), read-only."""
        if not self.fields_ready:
            self._waiting = (self.show_live, (name, config, note))
            return
        if self.shows_run and self._run_shown == (name, config, note):
            return  # the app asks on every batch of events: refill only what changed
        self._run_shown = (name, config, note)
        self._remember_edits()
        self.set_class(True, "-live")
        self._last_data = None
        self._show_about(name, note)
        self._fill(config)
        self._show_error(None)

    def _remember_edits(self) -> None:
        """Keep what was typed for the preset on show, unless it is the preset's own values."""
        if self.preset is None or self.preset.config is None or self.has_class("-live"):
            return
        typed = self._typed()
        if typed != self._typed_from(self.preset.config.model_dump(mode="json")):
            self._edits[self.preset.name] = {**typed, "save_as": self.save_name()}
        else:
            self._edits.pop(self.preset.name, None)

    def _typed(self) -> dict:
        """The fields as typed (text, not parsed), keyed like the config."""
        typed: dict = {}
        for dotted in TEXT_FIELDS:
            _set(typed, dotted, self.query_one(f"#{_field_id(dotted)}", Input).value)
        _set(typed, "train.on_oom", self.query_one(f"#{_field_id('train.on_oom')}", Select).value)
        checkbox = self.query_one(f"#{_field_id('train.mixed_precision')}", Checkbox)
        _set(typed, "train.mixed_precision", checkbox.value)
        return typed

    def _typed_from(self, data: dict) -> dict:
        typed: dict = {}
        for dotted in TEXT_FIELDS:
            _set(typed, dotted, _show(_get(data, dotted)))
        _set(typed, "train.on_oom", _get(data, "train.on_oom"))
        _set(typed, "train.mixed_precision", bool(_get(data, "train.mixed_precision")))
        return typed

    def _fill(self, data: dict) -> None:
        from engine.remedies import oom_policies

        self._filling = True
        try:
            if not self._policies_listed:
                self.query_one(f"#{_field_id('train.on_oom')}", Select).set_options(
                    [(policy, policy) for policy in oom_policies()]
                )
                self._policies_listed = True
            for dotted in TEXT_FIELDS:
                self.query_one(f"#{_field_id(dotted)}", Input).value = _show(_get(data, dotted))
            policy = _get(data, "train.on_oom")
            if policy in oom_policies():
                self.query_one(f"#{_field_id('train.on_oom')}", Select).value = policy
            checkbox = self.query_one(f"#{_field_id('train.mixed_precision')}", Checkbox)
            checkbox.value = bool(_get(data, "train.mixed_precision"))
        finally:
            self._filling = False

    def set_field(self, dotted: str, text: str) -> None:
        """Put ``text`` in the field of ``dotted`` (a text field) as if typed; it is validated."""
        self.query_one(f"#{_field_id(dotted)}", Input).value = text

    def values(self) -> dict:
        """The preset's config with the fields' values laid over, as plain data."""
        from engine.config import parse_value

        data = self.preset.config.model_dump(mode="json")
        for dotted in TEXT_FIELDS:
            text = self.query_one(f"#{_field_id(dotted)}", Input).value.strip()
            _set(data, dotted, text if dotted in PLAIN_STRING_FIELDS else parse_value(text))
        _set(data, "train.on_oom", self.query_one(f"#{_field_id('train.on_oom')}", Select).value)
        checkbox = self.query_one(f"#{_field_id('train.mixed_precision')}", Checkbox)
        _set(data, "train.mixed_precision", checkbox.value)
        return data

    def validate(self) -> RunConfig | None:
        """Check the fields now; post :class:`ConfigEdited` and return the config or None."""
        if self.preset is None or self.preset.config is None or self.has_class("-live"):
            return None
        from engine.config import ConfigError, validate_config

        data = self.values()
        if data == self._last_data:
            return self.config  # an echo of filling the fields: nothing changed
        self._last_data = data
        try:
            self.config = validate_config(data)
            self._show_error(None)
        except ConfigError as error:
            self.config = None
            self._show_error(str(error))
        self.post_message(ConfigEdited(self.config, self.error))
        return self.config

    def save_name(self) -> str:
        """The name typed in "save as"."""
        if not self.fields_ready:
            return ""
        return self.query_one("#save-name", Input).value.strip()

    def _show_about(self, name: str, description: str) -> None:
        self._about = (name, description)
        about = self.query_one("#config-about", Static)
        width, rows = about.content_size.width, about.styles.max_height
        if width and rows is not None and rows.cells:
            # The rows the pane gives it, whole words and a "…": the rest is in the tooltip.
            shown = clip_to_rows(f"{name}  {description}", width, int(rows.value))[len(name) + 2 :]
        else:
            shown = description
        about.tooltip = description or None
        about.update(Text.assemble((name, "bold"), "  " if description else "", (shown, "dim")))

    def on_resize(self) -> None:
        if self._about is not None:
            self._show_about(*self._about)

    def _show_error(self, error: str | None) -> None:
        self.error = error
        self.set_class(error is not None, "-invalid")
        self.query_one("#config-error", Static).update(Text(f"✗ {error}" if error else ""))
        for widget in self.query(".field Input, Checkbox, Select"):
            dotted = widget.name or (widget.id or "").removeprefix("field-")
            bad = bool(error) and _error_names(error, widget.id or "", dotted)
            widget.set_class(bad, "-invalid")

    @on(Input.Changed)
    @on(Checkbox.Changed)
    @on(Select.Changed)
    def _edited(self, event: Any) -> None:
        event.stop()
        if not self._filling and getattr(event, "input", None) is not self._save_input():
            self.validate()

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        # Enter in a field means "start": let the app's binding decide.
        event.stop()
        self.post_message(StartRequested())

    def _save_input(self) -> Input:
        return self.query_one("#save-name", Input)


def _error_names(error: str, widget_id: str, dotted: str) -> bool:
    """True when the one-line config error is about this field."""
    field = widget_id.removeprefix("field-").replace("-", "_")
    return error.split(":")[0].strip().replace(".", "_") == field or error.startswith(dotted + ":")
