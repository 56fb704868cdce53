"""The package's shape holds: layers read downward and no package's modules import each
other in a cycle (import-linter's contracts in pyproject.toml's [tool.importlinter])."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(where: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the ``rollout`` package found first from ``where``."""
    env = {**os.environ, "PYTHONPATH": str(where), "NO_COLOR": "1"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_layers_and_the_absence_of_cycles_hold() -> None:
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "9 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "added", "broken"),
    [
        # The core reaching up into the command line.
        ("core/errors.py", "import rollout.cli", "Layers: the pipeline reads downward"),
        # A preview reaching up into the enforcement that reads it, inside one stage.
        ("phases/previews.py", "import rollout.phases.enforce", "Layers of the phases"),
        # Two modules of the notify package importing each other (render reads emails).
        ("notify/emails.py", "import rollout.notify.render", "No import cycles"),
    ],
    ids=["upward", "upward-in-a-stage", "cycle"],
)
def test_an_import_against_the_shape_breaks_a_contract(
    tmp_path: Path, module: str, added: str, broken: str
) -> None:
    shutil.copytree(ROOT / "rollout", tmp_path / "rollout")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "rollout" / module
    target.write_text(target.read_text() + f"\n{added}  # added by the test\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0, done.stdout
    assert f"{broken}" in done.stdout and "BROKEN" in done.stdout, done.stdout
