"""Where the definitions an analyst edits are: ``sql/`` (the warehouse's models) and
``reports/`` (the report's templates).

Both live at the top of the checkout, beside ``rollout/``. The wheel maps them into the
package at build time (``rollout/sql``, ``rollout/reports``: pyproject.toml's
``[tool.hatch.build.targets.wheel.sources]``), so:

- installed from a wheel (``pip install .``), they are read from inside the installed
  package, found with ``importlib.resources``;
- in an editable install (``pip install -e '.[dev]'``) or a plain checkout the package
  has no copy of them, and they are read from the checkout, where they are edited.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Literal

from rollout.core.errors import RolloutError

Resource = Literal["sql", "reports"]


def resource_dir(name: Resource) -> Path:
    """The folder ``sql`` or ``reports``: the installed package's own copy when there is
    one (a wheel install), else the checkout's (beside the ``rollout`` package)."""
    packaged = files("rollout") / name
    if packaged.is_dir():
        # A wheel is installed as plain files, so this is a real directory.
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parents[2] / name  # rollout/core/ -> the checkout
    if checkout.is_dir():
        return checkout
    raise RolloutError(
        f"{name}/ not found: neither in the installed package ({packaged}) nor beside it "
        f"({checkout}); reinstall rollout (`pip install .` carries {name}/ inside the wheel)"
    )
