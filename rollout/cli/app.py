"""The ``rollout`` command's application: the Typer app and its callback (one Runtime per
invocation), the error handling every command shares, and the common options.

Exit codes (DESIGN.md): 0 success, 1 failure, 2 bad usage or bad input, 3 refused by a
safety guard. Messages and progress go to stderr; stdout carries only the listing.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer
from typer import rich_utils as typer_rich_utils

from rollout import __version__
from rollout.core.controls import quoted
from rollout.core.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    GuardRefused,
    RolloutError,
    input_output_failure,
)
from rollout.core.output import Format, labelled, stderr
from rollout.core.stopping import stopped_by_interruption, terminate_as_interrupt
from rollout.runtime import Runtime

F = TypeVar("F", bound=Callable[..., Any])


def _usage_error_line(error: click.ClickException) -> None:
    """A usage error (an option's bad value, an unknown option) as the one line every
    other error is, with where to look, instead of Typer's boxed panel of five.

    A group run with no sub-command (`rollout notify`) has printed its help already:
    nothing to add (Typer's own function says nothing then either). Known by its name,
    as Typer knows it: Typer raises it from its own copy of click."""
    if type(error).__name__ == "NoArgsIsHelpError":
        return
    context = getattr(error, "ctx", None)
    hint = f" (see `{context.command_path} --help`)" if context is not None else ""
    stderr.print(labelled("error:", "bold red", f"{error.format_message()}{hint}"))


# Typer shows a ClickException through this function when Rich is there (typer.core
# looks it up on the module each time): the one place its format is chosen.
typer_rich_utils.rich_format_error = _usage_error_line


def _paragraphs_rewrapped(paragraphs: list[str], markup_mode: Any) -> str:
    """A command's help after its first paragraph, each paragraph wrapped to the
    terminal: the line breaks inside one are the docstring's source wrapping, which
    Typer 0.29 kept (a paragraph broke mid-sentence at column 88 on any terminal). A
    paragraph starting with ``\\b`` keeps its lines, as Click's help does."""
    return "\n\n".join(
        paragraph if paragraph.startswith("\b") else " ".join(paragraph.split())
        for paragraph in paragraphs
    )


# Typer's help formats a command's later paragraphs through this function (looked up on
# the module each time).
typer_rich_utils._fix_linebreaks = _paragraphs_rewrapped


def _first_paragraph_rewrapped(*, help_text: str, markup_mode: Any) -> Any:
    """A command's line in its group's command list: the first paragraph of its help
    wrapped to the panel, as the command's own help shows it. Typer 0.29 kept the
    docstring's source breaks there (``rollout orgs --help`` broke a description after
    "records" and again mid-sentence at each source line)."""
    first, gap, rest = inspect.cleandoc(help_text).partition("\n\n")
    if not first.startswith("\b"):
        first = " ".join(first.split())
    return _command_help(help_text=first + gap + rest, markup_mode=markup_mode)


# Typer's group help builds each command's line through this function (looked up on the
# module each time, by typer.rich_utils._print_commands_panel).
_command_help = typer_rich_utils._make_command_help
typer_rich_utils._make_command_help = _first_paragraph_rewrapped


def _flag_type_shown(option: typer.core.TyperOption, ctx: click.Context) -> str | None:
    """No type for a flag (``--apply``, ``--help``): it takes no value, and Typer 0.29's
    ``<bool>`` beside one reads as if it did (``--apply true`` is then refused as an
    extra argument). Every option taking a value keeps its type."""
    if option.is_flag and not option.count:
        return None
    return _option_type_shown(option, ctx)


# Typer's help panels ask each option for this (typer.rich_utils._print_options_panel).
_option_type_shown = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = _flag_type_shown  # type: ignore[method-assign]

app = typer.Typer(
    name="rollout",
    help="Move a package registry's maintainers to mandatory two-factor authentication.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def path_given(text: str) -> Path:
    """The parser of every path a command takes. An empty one (``rollout ingest
    "$LANDING"`` with the variable unset) is refused: ``Path("")`` is the working folder,
    which ingest scanned and copy-warehouse wrote its copy into."""
    if not text.strip():
        raise typer.BadParameter("is empty: name a file or folder (an unset variable?)")
    return Path(text)


def listen_host(text: str) -> str:
    """The parser of every interface a server listens on (``--host``): an IP address, or
    a name this machine resolves (``localhost``). Refused here, naming the option (exit
    2), what the server would fail to listen on as an error of its own words ("Name or
    service not known", exit 1): ``999.1.1.1``, an empty value, a URL given for a host."""
    import ipaddress
    import socket

    host = text.strip()
    if not host:
        raise typer.BadParameter("is empty: name an interface, such as 127.0.0.1")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return host
    looks_like = "/" in host or ":" in host or any(not c.isprintable() for c in host)
    if not looks_like:
        try:
            socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except (OSError, UnicodeError):
            looks_like = True
    if looks_like:
        raise typer.BadParameter(
            f"{quoted(text)} is not an IP address nor a name this machine resolves "
            "(e.g. 127.0.0.1, 0.0.0.0, ::1, localhost)"
        )
    return host


FormatOption = Annotated[
    Format, typer.Option("--format", "-f", help="Output format: table, csv or json.")
]


def _runtime(ctx: typer.Context) -> Runtime:
    """This invocation's runtime (settings, plan, registry, warehouse), which the callback
    made, with its settings read.

    Read here, in the command and under ``reports_errors``: a bad setting is the one-line
    error (exit code 2) the command reports first, before a bad option value, as it
    always was. A command that needs no settings (``plan check FILE``) does not ask."""
    runtime = ctx.find_object(Runtime)
    if runtime is None:  # pragma: no cover - every command runs under the callback
        raise RuntimeError("no runtime: run the command through the `rollout` app")
    _ = runtime.settings
    return runtime


def reports_errors(function: F) -> F:
    """Turn the library's errors into a message on stderr and the promised exit code."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except RolloutError as error:
            stderr.print(labelled("error:", "bold red", error))
            raise typer.Exit(error.exit_code) from error
        except (KeyboardInterrupt, Exception) as error:  # (Stopped is a KeyboardInterrupt)
            # SIGTERM/SIGINT: every child is gone, nothing half-done (a transaction a
            # signal cut short rolls back); DuckDB reports one as a RuntimeError, or as
            # its InterruptException when the stop interrupted it (interrupting_on_stop).
            stopped = stopped_by_interruption(error)
            if stopped is not None:
                stderr.print(str(stopped), highlight=False, markup=False)
                raise typer.Exit(stopped.exit_code) from None
            if isinstance(error, KeyboardInterrupt):
                raise
            failure = input_output_failure(error)
            if failure is None:
                raise
            # A file the command could not read or write (a full disk, a permission): one
            # line, not a traceback; what it was writing is not in place (files are
            # written beside their targets and moved in whole).
            stderr.print(labelled("error:", "bold red", failure))
            raise typer.Exit(EXIT_FAILURE) from error

    return wrapper  # type: ignore[return-value]


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """rollout: measure reach, pick cohorts, warn, rehearse, enforce and report 2FA."""
    if version:
        typer.echo(__version__)
        raise typer.Exit()
    # One runtime for the invocation: nothing is read or opened until a command uses it,
    # and what it opened (the registry's engine) is closed when the command ends.
    runtime = Runtime()
    ctx.obj = runtime
    ctx.call_on_close(runtime.close)
    # SIGTERM (a scheduler's cancel, `kill PID`) stops a command as Ctrl-C does:
    # reports_errors says so and exits 143.
    ctx.with_resource(terminate_as_interrupt())


AsOfOption = Annotated[
    str | None, typer.Option("--as-of", help="The day, YYYY-MM-DD (default: the latest computed).")
]

ApplyOption = Annotated[
    bool, typer.Option("--apply", help="Make the change (without: preview only).")
]


def _parse_day(text: str, option: str) -> date:
    """A day given on the command line: YYYY-MM-DD, in the range a plan's dates take
    (the future too: the demo's clock and a release manager's preview run ahead)."""
    from rollout.core.plan import SUPPORTED_DAYS, is_supported_day

    def refused(reason: str) -> RolloutError:
        return RolloutError(f"{option}: {quoted(text)} {reason}").with_exit(EXIT_BAD_INPUT)

    try:
        day = date.fromisoformat(text)
    except ValueError as error:
        raise refused("is not a date (YYYY-MM-DD)") from error
    # YYYY-MM-DD only, the form the docs give: Python 3.11 reads others too (20220131,
    # 2022-W05-1), which a typo can land in. A day in that form is its own isoformat.
    if day.isoformat() != text:
        raise refused("is not a date in the form YYYY-MM-DD")
    # A day far out rebuilt the marts for millions of days and then overflowed.
    if not is_supported_day(day):
        raise refused(f"is out of range: days are {SUPPORTED_DAYS}")
    return day


def _data_day(text: str, option: str) -> date:
    """A day whose data a command computes (metrics, cohorts, the report): not after
    today (UTC, by the pipeline's clock). A day ahead has no data: its metrics then
    stood as the latest day package_metrics and the what-ifs default to, and its report
    claimed adoption figures up to a day that has not come."""
    from rollout.core.clock import require_data_day

    day = _parse_day(text, option)
    require_data_day(day, option)
    return day


def _typed_back(acting: str, preview: str, needed: Sequence[tuple[str, str, object]]) -> None:
    """The one rule of every apply that acts on a previewed list of people (phase
    enforce, orgs enforce and reinvite, notify withdraw): ``acting`` (``--apply``,
    ``--confirm``) needs each of ``needed`` (flag, what it is, as given) typed back
    from the preview, the count and the list's fingerprint among them. Exit 2 naming
    each one missing and ``preview``, the command that prints them; nothing is read or
    changed before."""
    missing = [f"{flag} ({why})" for flag, why, given in needed if given is None]
    if missing:
        raise RolloutError(
            f"{acting} needs {', '.join(missing)}: run `{preview}`, check the list, and "
            "copy the command it prints"
        ).with_exit(EXIT_BAD_INPUT)


@contextlib.contextmanager
def _changes_named(naming: Callable[[GuardRefused], GuardRefused]) -> Iterator[None]:
    """A refusal as not previewed raised inside is told again by ``naming``, with who or
    what changed since the preview typed back when its saved files are here to say
    (rollout.phases.previews), or raised as it was."""
    try:
        yield
    except GuardRefused as refused:
        said = naming(refused)
        if said is refused:
            raise
        raise said from None


def _fingerprint(text: str | None, option: str = "--expect-list") -> str | None:
    """A list's fingerprint typed back: 12 hex digits, as the preview printed it. Another
    value (a digit short, a count pasted in its place) is a usage error, not the list
    that changed since the preview the guard would call it (exit 3, "preview again")."""
    from rollout.core.fingerprints import is_fingerprint

    if text is not None and not is_fingerprint(text):
        raise RolloutError(
            f"{option}: {quoted(text)} is not a list's fingerprint (12 hex digits, as the preview "
            "printed it)"
        ).with_exit(EXIT_BAD_INPUT)
    return text


def _given_day(text: str | None, option: str = "--as-of") -> date | None:
    """The day an option gives, parsed before the command reads its plan, warehouse or
    registry (a bad --as-of is said as that, not as "no warehouse yet"), or None."""
    return _parse_day(text, option) if text is not None else None


def _day_or_latest(con: Any, day: date | None, table: str, cohort: str | None = None) -> date:
    """The ``--as-of`` day given (``_given_day``), or else the latest day ``table`` holds
    (of ``cohort``)."""
    if day is not None:
        return day
    from rollout.cohorts import latest_as_of

    latest = latest_as_of(con, table, cohort)
    if latest is None:
        # No day has it yet, so no --as-of helps: say what computes the first, as a
        # day not computed is refused ("run `rollout metrics --as-of D` first").
        if table == "cohort_account_snapshots":
            missing = f"cohort {cohort} was never built" if cohort else "no cohort built yet"
            command = "rollout cohorts build --as-of YYYY-MM-DD"
        else:
            missing, command = (
                "no package metrics computed yet",
                "rollout metrics --as-of YYYY-MM-DD",
            )
        raise RolloutError(f"{missing}: run `{command}` first").with_exit(EXIT_BAD_INPUT)
    return latest


# The forms a time on the command line takes: the day as --as-of takes it (YYYY-MM-DD),
# then optionally THH:MM or THH:MM:SS, then optionally an offset (Z, +HH:MM). Python
# 3.11's datetime.fromisoformat reads more (20220216, 2022-W07-3, 2022-02-16x10, T1000),
# forms --as-of refuses, which a typo can land in.
_TIME_FORMS = "YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS], UTC or with an offset (Z, +HH:MM)"
_TIME_TEXT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:T[0-9]{2}:[0-9]{2}(?::[0-9]{2})?(?:Z|[+-][0-9]{2}:[0-9]{2})?)?"
)


def _parse_time(text: str, option: str = "--at") -> datetime:
    """A time: YYYY-MM-DD (its midnight) or YYYY-MM-DDTHH:MM[:SS], in UTC or with an
    offset; stored naive UTC, as the registry keeps it."""

    def refused(reason: str) -> RolloutError:
        return RolloutError(f"{option}: {quoted(text)} {reason}").with_exit(EXIT_BAD_INPUT)

    try:
        moment = datetime.fromisoformat(text)
    except ValueError as error:
        raise refused(f"is not a time ({_TIME_FORMS})") from error
    if not _TIME_TEXT.fullmatch(text):
        raise refused(f"is not a time in the form {_TIME_FORMS}")
    from rollout.core.plan import SUPPORTED_DAYS, supported_utc

    utc = supported_utc(moment)
    if utc is None:
        raise refused(f"is out of range: times are {SUPPORTED_DAYS} (UTC)")
    return utc
