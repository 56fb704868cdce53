"""Errors that users see, each tied to the exit code the CLI promises (DESIGN.md)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from rollout.core.controls import controls_shown, visible

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_REFUSED = 3


class RolloutError(Exception):
    """Base for errors the CLI turns into a message on stderr and an exit code."""

    exit_code = EXIT_FAILURE

    def with_exit(self, code: int) -> RolloutError:
        """The same error with another exit code (e.g. 2 for a bad option value)."""
        self.exit_code = code
        return self


class BadInput(RolloutError):
    """Input that cannot be used; the message names the file, the line and the reason."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, path: Path | str | None, line: int | None, reason: str) -> None:
        self.path = Path(path) if path is not None else None
        self.line = line
        self.reason = reason
        if self.path is None:  # a name or value given on the command line
            super().__init__(reason)
            return
        # A file's name is data (a landing file's may hold a line break, or ESC): shown
        # with its control characters escaped, so it cannot start a line of its own.
        shown = visible(self.path)
        where = f"{shown}:{line}" if line is not None else shown
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class RowProblem:
    """One bad row found while validating a landing file."""

    line: int
    reason: str


class FileRejected(BadInput):
    """A landing file refused whole: nothing of it was loaded."""

    def __init__(self, path: Path, problems: list[RowProblem], summary: str) -> None:
        self.problems = problems
        first = problems[0] if problems else None
        detail = summary
        if first is not None:
            shown = "; ".join(f"line {p.line}: {p.reason}" for p in problems[:5])
            more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
            detail = f"{summary}: {shown}{more}"
        super().__init__(path, first.line if first else None, detail)


class GuardRefused(RolloutError):
    """A safety guard refused the run (count mismatch, blast radius, lock held)."""

    exit_code = EXIT_REFUSED


def input_output_failure(error: BaseException) -> str | None:
    """What an operating-system or DuckDB input/output error says, in one line naming
    the file when it knows it, or the registry's server not answering; None for any
    other error (a bug keeps its traceback). The CLI prints it (exit 1), and a flow run
    ends Failed with it as its message (flows/common.py), rather than a traceback."""
    if isinstance(error, OSError) and not isinstance(error, ConnectionError | TimeoutError):
        what = error.strerror or str(error)
        return f"{visible(error.filename)}: {what}" if error.filename else what
    duckdb = sys.modules.get("duckdb")  # loaded by then if it raised; never imported here
    if duckdb is not None and isinstance(error, duckdb.IOException):
        return controls_shown(error)
    # The registry's server not there, or gone mid-run: one line (the driver's reason;
    # drivers do not repeat a password), not a page of traceback. One that turns the URL
    # down (its login, its database) is a RegistryURLRefused, exit 2.
    sqlalchemy = sys.modules.get("sqlalchemy.exc")
    if sqlalchemy is not None and isinstance(
        error, sqlalchemy.OperationalError | sqlalchemy.InterfaceError
    ):
        reason = " ".join(str(getattr(error, "orig", None) or error).split())
        return controls_shown(f"the registry database: {reason}")
    return None
