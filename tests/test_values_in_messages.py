"""A value a person chose (an option typed, a cell of a file, a setting), named in a
refusal, is named the one way: ``rollout.core.controls.quoted``, its own quotes and
backslashes escaped and its control characters shown. Python's repr, which these
messages used, switched to double quotes when the value held a ``'`` and escaped
otherwise than a terminal shows a value, so one value read differently in two
messages (docs/security.md, terminals)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from rollout.cli import app
from rollout.core.controls import quoted
from tests.hostile import PROSE, TERMINAL

# Values holding a quote (repr's switch to double quotes), a control character, a
# backslash, and all three.
VALUES = [*PROSE, *TERMINAL, "o'neil\x1b[2K\\x1b"]


def said(result: Any) -> str:
    """What the command wrote on stderr, as one line however the console wrapped it."""
    return " ".join(result.stderr.split())


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize(
    ("args", "before", "after"),
    [
        (["orgs", "audit", "acme", "--role", "{}"], "--role", ": use owner, admin or developer"),
        (["sample", "--scale", "{}"], "unknown scale", ": use one of"),
        (["plan", "show", "--at", "{}"], "--at:", "is not"),
        (["cohorts", "diff", "{}", "2022-01-04", "--cohort", "high-impact"], "D1:", "is not"),
        (["db", "downgrade", "{}"], "revision", "is not one of this code's migrations"),
    ],
)
def test_a_value_typed_on_the_command_line_is_named_quoted(
    rollout_home: Path, value: str, args: list[str], before: str, after: str
) -> None:
    """An option's value the command refuses (exit 2) is named as ``quoted`` names it:
    ``--role "o'neil', 'x"`` and ``--role 'x'`` no longer read in two styles."""
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0

    result = runner.invoke(app, [a.replace("{}", value) for a in args])

    assert result.exit_code == 2, result.output
    assert f"{before} {one_line(quoted(value))}{'' if after[0] == ':' else ' '}{after}" in said(
        result
    )


@pytest.mark.parametrize("value", VALUES)
def test_a_run_id_and_a_fingerprint_typed_back_are_named_quoted(
    monkeypatch: pytest.MonkeyPatch, rollout_home: Path, value: str
) -> None:
    """`rollout approve` refuses a run id or a list's fingerprint that is none, naming
    what was typed the one way."""
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    runner = CliRunner()
    run_id = "0b6c8a52-9f1e-4c47-a1d2-5b0c3e7f9a10"

    bad_id = runner.invoke(app, ["approve", value, "--expect", "3", "--expect-list", "0" * 12])
    bad_list = runner.invoke(app, ["approve", run_id, "--expect", "3", "--expect-list", value])

    assert bad_id.exit_code == 2 and bad_list.exit_code == 2
    assert f"{one_line(quoted(value))} is not a flow run id" in said(bad_id)
    assert f"--expect-list: {one_line(quoted(value))} is not a list's fingerprint" in said(bad_list)
