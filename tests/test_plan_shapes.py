"""Sections a campaign may leave out: a plan without enhanced login verification and
without brown-outs (PyPI's, GitHub's and token campaigns had neither) checks, shows its
calendar and previews the emails it sends; the ones it never sends are refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from rollout.cli import app

REFERENCE = Path(__file__).resolve().parent.parent / "plans" / "npm-2022.yaml"


def run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def phases_alone(rollout_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    plan = yaml.safe_load(REFERENCE.read_text())
    del plan["elv"], plan["brownouts"]
    plan["name"] = "phases-alone"
    path = rollout_home.parent / "phases-alone.yaml"
    path.write_text(yaml.safe_dump(plan))
    monkeypatch.setenv("ROLLOUT_PLAN", str(path))
    return path


def test_a_plan_without_elv_and_brownouts_checks_and_shows_only_its_phases(
    phases_alone: Path,
) -> None:
    checked = run("plan", "check")
    assert checked.exit_code == 0, checked.output
    assert "0 brown-outs" in checked.stderr
    assert run("db", "upgrade").exit_code == 0
    shown = run("plan", "show", "--format", "json")
    assert shown.exit_code == 0, shown.output
    steps = [row["step"] for row in json.loads(shown.stdout)]
    assert steps and not [s for s in steps if "ELV" in s or "brown" in s]
    assert "phase top-100 enforced" in steps


def test_its_email_preview_skips_what_it_never_sends(
    phases_alone: Path, rollout_home: Path
) -> None:
    assert run("db", "upgrade").exit_code == 0
    previewed = run("notify", "preview")
    assert previewed.exit_code == 0, previewed.output
    files = [Path(line).name for line in previewed.stdout.split()]
    assert any(name.startswith("phase_notice-") for name in files)
    assert not [n for n in files if n.startswith(("brownout_heads_up", "elv_enrollment"))]
    for email, missing in (("brownout_heads_up", "brown-outs"), ("elv_enrollment", "ELV")):
        refused = run("notify", "preview", email)
        assert refused.exit_code == 2
        assert f"plan phases-alone never sends {email}: it has no {missing}" in refused.stderr


def test_a_plan_without_phases_previews_its_other_emails(
    rollout_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = yaml.safe_load(REFERENCE.read_text())
    plan["phases"], plan["name"] = [], "elv-alone"
    path = rollout_home.parent / "elv-alone.yaml"
    path.write_text(yaml.safe_dump(plan))
    monkeypatch.setenv("ROLLOUT_PLAN", str(path))
    assert run("db", "upgrade").exit_code == 0
    previewed = run("notify", "preview")
    assert previewed.exit_code == 0, previewed.output
    files = [Path(line).name for line in previewed.stdout.split()]
    assert any(name.startswith("elv_enrollment-") for name in files)
    assert not [n for n in files if n.startswith(("phase_", "reminder", "enforcement_"))]
    refused = run("notify", "preview", "reminder")
    assert refused.exit_code == 2
    assert "plan elv-alone never sends reminder: it has no phases" in refused.stderr
