"""A bench's child processes run the rollout the bench itself imports.

``python -m rollout`` puts the working folder first on the child's path, so a bench
run from /work/main with ``PYTHONPATH=<worktree>`` (to time another commit) ran
/work/main's rollout in its children: two commits compared were one. ``-P`` keeps the
working folder off the path, and the folder this process's rollout came from goes
first on the child's.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

ROLLOUT = [sys.executable, "-P", "-m", "rollout"]


def rollout_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with this process's rollout first on the path."""
    import rollout

    here = str(Path(rollout.__file__).resolve().parents[1])
    return {**env, "PYTHONPATH": os.pathsep.join(filter(None, (here, env.get("PYTHONPATH"))))}
