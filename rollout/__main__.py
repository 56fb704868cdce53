"""``python -m rollout``: the same as the ``rollout`` command."""

from rollout.cli import run

run()
