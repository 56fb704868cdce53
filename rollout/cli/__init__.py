"""The ``rollout`` command: one command per job, each a thin call into the library, in
a module per command group (rollout.cli.app holds the app and what they share).

Importing this package registers every command; the order of these imports is the
order of ``rollout --help``.
"""

# isort: off
from rollout.cli import db, plan, data, cohorts, phases, notify, report, demo, dev, orgs  # noqa: F401
from rollout.cli import brownouts  # noqa: F401
from rollout.cli.app import app

# isort: on

__all__ = ["app"]
