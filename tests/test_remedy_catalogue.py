"""engine.remedies: one catalogue that the config, the CLI, the control socket and the TUI read.

TF-free and fast: no worker starts here (tests/test_remedies.py runs the real ones).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from conftest import one_line_error, run_cli

from engine import remedies
from engine.config import ConfigError, validate_config
from engine.remedies import REMEDIES, Remedy, applicable_remedies, apply_remedy, oom_policies
from engine.run.control import ControlState
from engine.run.facts import RunFacts
from tests.fake_engine import oom_event
from tui.app import ConvdeckApp
from tui.cli.steer import _control_args
from tui.screens.help import help_text
from tui.widgets.remedy_bar import remedy_bindings

ROOT = Path(__file__).resolve().parent.parent
HINT = "train.on_oom: 'halve' is now called 'halve-batch'; read as that (write 'halve-batch' to drop this hint)"


def config(**train):
    return validate_config({"train": train})


# ----- train.on_oom -------------------------------------------------------------------------------


def test_on_oom_takes_ask_stop_and_every_remedy_by_name():
    assert oom_policies() == ("ask", "halve-batch", "halve-accumulate", "mixed-precision", "resnet18", "stop")
    for policy in oom_policies():
        assert config(on_oom=policy).train.on_oom == policy


def test_an_unknown_policy_is_one_line_listing_the_real_choices():
    with pytest.raises(ConfigError) as caught:
        config(on_oom="bogus")
    assert str(caught.value) == (
        "train.on_oom: got 'bogus'; expected one of ask, halve-batch, halve-accumulate, "
        "mixed-precision, resnet18, stop"
    )
    with pytest.raises(ConfigError, match="did you mean 'halve-accumulate'"):
        config(on_oom="halve-acumulate")


def test_the_former_name_halve_is_read_as_halve_batch_with_one_hint(monkeypatch, caplog):
    monkeypatch.setattr(remedies, "_hinted", set())
    with caplog.at_level(logging.WARNING, logger="convdeck.remedies"):
        assert config(on_oom="halve").train.on_oom == "halve-batch"
        assert config(on_oom="halve").train.on_oom == "halve-batch"  # validated again: no second hint
    assert caplog.messages == [HINT]


# ----- when each remedy applies ------------------------------------------------------------------


def names(cfg, replicas: int = 1) -> list[str]:
    return [remedy["name"] for remedy in applicable_remedies(cfg, replicas)]


def test_every_remedy_applies_to_the_defaults_in_catalogue_order():
    offered = applicable_remedies(config(batch_size=64))
    assert [r["name"] for r in offered] == list(REMEDIES)
    assert [r["key"] for r in offered] == [r.key for r in REMEDIES.values()]
    assert offered[0]["effect"] == "batch 64 -> 32; effective batch 64 -> 32"


def test_halving_stops_at_batch_one_and_must_split_over_the_replicas():
    assert names(config(batch_size=1)) == ["mixed-precision", "resnet18"]
    assert "halve-batch" in names(config(batch_size=12), replicas=2)  # 6 = 2 x 3
    assert names(config(batch_size=12), replicas=4) == ["mixed-precision", "resnet18"]  # 6 over 4
    with pytest.raises(ConfigError, match="does not apply: the batch size is already 1"):
        apply_remedy("halve-accumulate", config(batch_size=1))


def test_mixed_precision_only_when_it_is_off_and_resnet18_only_when_it_is_not_the_model():
    assert "mixed-precision" not in names(config(mixed_precision=True))
    resnet18 = validate_config({"model": {"arch": "resnet", "blocks": [2, 2, 2, 2]}})
    assert "resnet18" not in names(resnet18)
    assert "resnet18" in names(validate_config({"model": {"arch": "resnet", "blocks": [3, 4, 6, 3]}}))
    with pytest.raises(ConfigError, match="does not apply: mixed precision is already on"):
        apply_remedy("mixed-precision", config(mixed_precision=True))


def test_each_change_is_recorded_as_old_and_new_values():
    _, halved = apply_remedy("halve-batch", config(batch_size=32, steps_per_epoch=10))
    assert halved == {"train.batch_size": [32, 16], "train.steps_per_epoch": [10, 20]}
    _, accumulated = apply_remedy("halve-accumulate", config(batch_size=32, steps_per_epoch=10))
    assert accumulated == {"train.batch_size": [32, 16], "train.accumulation_steps": [1, 2]}
    switched, changes = apply_remedy("resnet18", config())
    assert switched.model.arch == "resnet" and changes["model.arch"] == ["lenet5", "resnet"]
    assert remedies.changes_weights("resnet18") and not remedies.changes_weights("halve-batch")


# ----- the names, everywhere they are typed ------------------------------------------------------


def test_ctl_remedy_halve_is_one_line_naming_halve_batch(convdeck_home):
    error = one_line_error(run_cli("ctl", "nope", "remedy", "halve"))
    assert error.endswith(
        "remedy NAME got 'halve', which is now called 'halve-batch'; "
        "expected one of halve-batch, halve-accumulate, mixed-precision, resnet18"
    )


def test_run_reads_on_oom_halve_with_a_hint_and_refuses_bogus(convdeck_home, fake_worker):
    fake_worker("complete")
    accepted = run_cli("run", "--set", "train.on_oom=halve-batch", "--detach")
    assert accepted.returncode == 0, accepted.stderr
    # --detach's advice goes to stderr; no hint beside it
    assert accepted.stderr.strip().startswith("started; watch it:") and HINT not in accepted.stderr
    former = run_cli("run", "--set", "train.on_oom=halve", "--detach")
    assert former.returncode == 0, former.stderr
    assert former.stderr.strip().splitlines()[0] == HINT
    error = one_line_error(run_cli("run", "--set", "train.on_oom=bogus"))
    assert error.endswith("expected one of ask, halve-batch, halve-accumulate, mixed-precision, resnet18, stop")


def test_no_remedy_name_is_written_out_beside_the_catalogue():
    """A quoted remedy name in engine/ or tui/ outside engine/remedies.py is a second list."""
    every_name = [name for remedy in REMEDIES.values() for name in (remedy.name, *remedy.former_names)]
    quoted = re.compile(r"""["']({})["']""".format("|".join(map(re.escape, every_name))))
    found = []
    for folder in ("engine", "tui", "presets"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".toml", ".md", ".tcss") and path != ROOT / "engine" / "remedies.py":
                for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                    code = line.split("#", 1)[0] if path.suffix == ".py" else line
                    if quoted.search(code) and "e.g." not in code:
                        found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []


def test_the_app_binds_every_remedy_key_and_no_key_to_two_things():
    bindings = ConvdeckApp.BINDINGS
    ids = [binding.id for binding in bindings]
    for remedy in REMEDIES.values():
        assert f"remedy.{remedy.name}" in ids
    # A key may have two entries that do one thing, the footer showing the one that applies
    # now: space is Pause or Resume, a remedy's key is in the footer only while an OOM waits.
    same = {"pause": "pause_resume", "resume": "pause_resume"}
    does: dict[str, set[str]] = {}
    for binding in bindings:
        action = binding.action.removeprefix("offered_")
        for key in binding.key.split(","):
            does.setdefault(key, set()).add(same.get(action, action))
    assert {key: actions for key, actions in does.items() if len(actions) > 1} == {}


def test_the_help_lists_every_remedy_and_its_key():
    page = help_text()
    for remedy in REMEDIES.values():
        assert f"| `{remedy.key}` | remedy {remedy.name}: {remedy.title} | a live run |" in page
    assert f"(`{''.join(r.key for r in REMEDIES.values())}` are the remedies)" in page
    assert "{remedy" not in page


# ----- one entry adds a remedy -------------------------------------------------------------------


@pytest.fixture
def quarter_batch(monkeypatch) -> Remedy:
    """A remedy added to the catalogue alone, as a new one would be."""
    remedy = Remedy(
        "quarter-batch",
        key="u",
        label="Quarter batch",
        title="quarter the batch size",
        change=lambda cfg: {"train.batch_size": cfg.train.batch_size // 4},
        effect=lambda cfg: f"batch {cfg.train.batch_size} -> {cfg.train.batch_size // 4}",
        blocker=lambda cfg, replicas: None if cfg.train.batch_size >= 4 else "the batch is under 4",
    )
    monkeypatch.setitem(REMEDIES, remedy.name, remedy)
    return remedy


def test_one_catalogue_entry_reaches_the_config_the_cli_and_the_worker(quarter_batch):
    cfg = config(batch_size=64, on_oom="quarter-batch")
    assert cfg.train.on_oom == "quarter-batch"
    assert "quarter-batch" in oom_policies()
    assert {"name": "quarter-batch", "key": "u", "title": "quarter the batch size", "effect": "batch 64 -> 16"} in (
        applicable_remedies(cfg)
    )
    assert apply_remedy("quarter-batch", cfg)[1] == {"train.batch_size": [64, 16]}
    assert _control_args("remedy", "quarter-batch") == {"name": "quarter-batch"}  # ctl RUN remedy NAME
    assert remedies.check_remedy("quarter-batch") == "quarter-batch"  # resume --remedy NAME
    assert ControlState().request("remedy", "quarter-batch")["ok"]  # the control socket
    assert "quarter-batch" in remedies.unknown_remedy("nope")


def test_one_catalogue_entry_reaches_the_tui_keys_help_and_remedy_bar(quarter_batch):
    (binding,) = [b for b in remedy_bindings() if b.id == "remedy.quarter-batch"]
    assert (binding.key, binding.action, binding.description) == ("u", "remedy('quarter-batch')", "Quarter batch")
    assert "| `u` | remedy quarter-batch: quarter the batch size | a live run |" in help_text()
    oom = oom_event(5, batch_size=64)  # the test fake offers what the worker would
    assert [r.name for r in oom.remedies][-1] == "quarter-batch"
    facts = RunFacts(run_id="r1")
    facts.fold(oom)
    assert facts.remedies_offered()[-1].key == "u"
