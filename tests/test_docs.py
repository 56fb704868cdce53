"""The CLI mirrors the library and documents itself; the library never imports prefect."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from rollout.cli import app

ROOT = Path(__file__).resolve().parent.parent


def all_commands() -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []

    def walk(prefix: str, command: Any) -> None:
        found.append((prefix, command))
        # Typer builds click-like groups; a group is what has sub-commands.
        for name, sub in getattr(command, "commands", {}).items():
            walk(f"{prefix} {name}".strip(), sub)

    walk("", typer.main.get_command(app))
    return found


@pytest.mark.parametrize(("name", "command"), all_commands(), ids=lambda v: str(v) or "rollout")
def test_every_command_has_help(name: str, command: Any) -> None:
    assert (command.help or "").strip(), f"rollout {name} has no help text"
    result = CliRunner().invoke(app, [*name.split(), "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_the_commands_the_design_promises_exist() -> None:
    names = {name for name, _ in all_commands()}
    assert {"sample", "ingest", "summary", "quarantine", "db upgrade", "db status"} <= names


def test_nothing_under_rollout_imports_prefect() -> None:
    offenders = []
    for path in (ROOT / "rollout").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            modules: list[str] = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            if any(m == "prefect" or m.startswith("prefect.") for m in modules):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_the_readme_gives_exactly_the_two_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
