"""Snoozes: an account postpones its own deadline once, by at most the plan's days.

GitHub's 2023 campaign gave each account 45 days from its own notice and let it snooze
once, for up to 7 days. Here a snooze is requested by a release manager's command
(`rollout phase snooze PHASE USERNAME --days N`), or in a file of requests the
registry's site collected (CSV `username,days[,requested_at]`): given to the command
(`--file`), or landed under ``landing/snoozes/<phase>/``, where the daily `notify`
flow grants them before queueing (``grant_landed``). Each is
granted or refused with the reason; a grant is one ``deadline_snoozes`` row and one
audit row, exactly once (a rerun of the same file grants nothing twice). Each account
asking is answered by email (``snooze_reply``, queued in the same transaction): its
new deadline, or why not in its own terms, once per request. Granting
takes the enforcement lock, so no snooze lands in the middle of an enforcement run
that already chose its accounts.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, and_, select

from rollout.core.calendar import REQUESTS_FINGERPRINT, snooze_step
from rollout.core.controls import control_found, quoted
from rollout.core.counts import in_exponent_notation, whole_count
from rollout.core.errors import BadInput
from rollout.core.files import MIB, csv_reason, links_outside, read_whole, utf8_text
from rollout.core.fingerprints import list_fingerprint
from rollout.core.plan import FIRST_DAY, Phase, Plan, supported_utc
from rollout.core.words import counted
from rollout.notify.queue import queue_each
from rollout.phases.enforce import LOCK
from rollout.registry import Registry
from rollout.registry.batches import in_chunks
from rollout.registry.deadlines import SNOOZES, deadlines
from rollout.registry.engine import begin_writing
from rollout.registry.ledger import (
    dialect_insert,
    record_actions,
    recorded_run,
    utc_now,
)
from rollout.registry.models import (
    Account,
    CohortMembership,
    Notification,
    PhaseRequirement,
    current_members,
)
from rollout.warehouse.landing import COMPRESSED_SUFFIXES, shorten

ACCOUNTS = Account.__table__
NOTIFICATIONS = Notification.__table__
REQUIREMENTS = PhaseRequirement.__table__
COMMAND = "command"


@dataclass(frozen=True)
class SnoozeRequest:
    username: str
    days: int
    requested_at: datetime
    source: str  # COMMAND, or "<file> line <n>"
    # False when requested_at is only when the request was read (the command, a file
    # row without one): then the same days granted before is the same request again,
    # read again (a rerun after a kill, the daily flow reading a landed file anew).
    requested_at_given: bool = True
    # Without a time of its own, what makes it the same request when read again (its
    # answer is sent once): a landed file's name (the daily flow reads it every day), a
    # file given to the command with the day it was read, the command's day.
    read_as: str = ""


@dataclass(frozen=True)
class SnoozeOutcome:
    username: str
    days: int
    outcome: str  # granted | already | refused
    reason: str  # the new deadline, or why not
    deadline: date | None = None
    told: str = ""  # why not, as the reply to the maintainer says it
    account_id: int | None = None  # the account asking, when there is one to answer
    # The occasion of the snooze_reply it owes (reply_occasion); None when there is
    # nobody to answer, or the answer is queued already (a request read again).
    reply: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "days": self.days,
            "outcome": self.outcome,
            "deadline": self.deadline,
            "reason": self.reason,
        }


REPLY_EMAIL = "snooze_reply"


def username_problem(username: str) -> str | None:
    """Why ``username`` cannot be an account asking for a snooze, or None: empty, or
    holding a control character (a line break, NUL, ESC, a bidi override), which a
    plan's usernames may not hold either (rollout.core.plan.Username) and PostgreSQL
    cannot even compare (NUL). Such a request is a broken file, or a typo, said at its
    line (exit 2), not looked up and refused as "no such account" (exit 3)."""
    if not username:
        return "username is empty"
    found = control_found(username)
    if found is not None:
        return (
            f"username {quoted(username)} holds a control character ({found}): a username "
            "is one line without control characters"
        )
    return None


def command_request(username: str, days: int, now: datetime) -> SnoozeRequest:
    """A request given on the command line, read ``now``: the same command again the
    same day (after a kill) is the same request. A USERNAME no account can have is bad
    input (``username_problem``); spaces around it are dropped, as in a file's."""
    username = username.strip()
    problem = username_problem(username)
    if problem is not None:
        raise BadInput(None, None, f"USERNAME: {problem}")
    return SnoozeRequest(username, days, now, COMMAND, False, f"{COMMAND}|{now.date()}")


def reply_occasion(request: SnoozeRequest, granted: bool) -> str:
    """The reply's occasion (one email per account, phase and occasion): a grant is
    answered once (one snooze per account); a refusal once per request. A request with
    its own time is that time and its days, whatever file it comes in (a site's export
    may repeat a pending one); without one, its days as it was read (``read_as``)."""
    if granted:
        return "granted"
    when = request.requested_at.isoformat() if request.requested_at_given else request.read_as
    key = f"{request.days}|{when}"
    return f"refused {hashlib.sha256(key.encode()).hexdigest()[:16]}"


def requests_fingerprint(requests: list[SnoozeRequest]) -> str:
    """Which requests a run judges, whatever their order: each as ``reply_occasion``
    tells one from another (its days, and its own time or how it was read), so the
    same command or file run again after a kill is the same requests."""
    return list_fingerprint(
        f"{r.username}|{r.days}|"
        + (r.requested_at.isoformat() if r.requested_at_given else r.read_as)
        for r in requests
    )


_COLUMNS = ("username", "days", "requested_at")
# The most a file of requests may hold (read whole): a million requests fit in a third of
# it; a file larger is no file of requests, and is refused before it fills the memory.
MAX_REQUEST_FILE_BYTES = 64 * MIB


def read_requests(path: Path, now: datetime, *, read_each_day: bool = False) -> list[SnoozeRequest]:
    """The requests of a CSV file (header ``username,days`` and an optional
    ``requested_at``, UTC). Any bad row refuses the whole file, naming its line. A row
    without a time is the same request each time the file is read (a landed file, read
    by the daily flow every day), or, ``read_each_day``, each day it is read (a file
    given to the command: next week's file of the same name asks anew)."""
    read_as = f"{path.name}|{now.date()}" if read_each_day else path.name
    try:
        data = read_whole(path, "file of snooze requests", MAX_REQUEST_FILE_BYTES)
    except OSError as error:
        raise BadInput(path, None, f"cannot read the file: {error.strerror}") from error
    # A byte-order mark (what spreadsheets write first) is skipped, as in landing files
    # (rollout.warehouse.landing): else the header's first name is not found.
    rows = _rows(path, utf8_text(path, data))
    first = next(rows, None)
    # A spreadsheet's export may say ` Username ` or `DAYS`: a column's name is read
    # trimmed and in any case (the message shows the header as written).
    written = first[1] if first is not None else []
    header = [name.strip().casefold() for name in written]
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:  # which one would be read? (a dict keeps the last, silently)
        # Said before what is missing: `username,username` is a name written twice.
        raise BadInput(
            path, 1, f"column {quoted(repeated[0])} appears twice (names are not case-sensitive)"
        )
    if not {"username", "days"} <= set(header):
        found = ", ".join(quoted(name) for name in written) or "nothing"
        raise BadInput(
            path,
            1,
            "the header must name the columns username and days "
            f"(and optionally requested_at); found {shorten(found)}",
        )
    unknown = [w for w, name in zip(written, header, strict=True) if name not in _COLUMNS]
    if unknown:
        raise BadInput(
            path, 1, f"unknown columns: {shorten(', '.join(quoted(name) for name in unknown))}"
        )
    requests: list[SnoozeRequest] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise BadInput(
                path, line, f"expected {counted(len(header), 'value')}, found {len(row)}"
            )
        values = dict(zip(header, row, strict=True))
        username = values["username"].strip()
        problem = username_problem(username)
        if problem is not None:
            raise BadInput(path, line, problem)
        days = _days(path, line, values["days"])
        at, given = now, bool(values.get("requested_at", "").strip())
        if given:
            at = _requested_at(path, line, values["requested_at"], now)
        if username in seen:
            raise BadInput(path, line, f"{quoted(username)} already asked on line {seen[username]}")
        seen[username] = line
        requests.append(
            SnoozeRequest(username, days, at, f"{path.name} line {line}", given, read_as)
        )
    return requests


def _rows(path: Path, text: str) -> Iterator[tuple[int, list[str]]]:
    """Each row of a CSV file's text with the line it starts on. The text is parsed
    whole, not split into lines first: a quoted value may span lines (and splitlines()
    also breaks at characters csv does not, such as U+2028), which shifted every line
    number after it. A malformed row (a quote never closed, text after a closing quote,
    a value beyond the csv module's limit) is bad input at the line it starts on: read
    leniently, a quote never closed took every line below it for one value."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    line = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise BadInput(path, line, csv_reason(error)) from None
        yield line, row
        line = reader.line_num + 1


def _days(path: Path, line: int, value: str) -> int:
    """A request's days: a whole count as every landing file writes one
    (rollout.core.counts: ASCII digits, 7.0 too). Python's int() also reads 1_000, +7
    and other scripts' digits, which would then be refused as too many days (exit 3)
    when it is the file that is wrong (exit 2)."""
    digits = value.strip().split(".", 1)[0].lstrip("-")
    # Any longer is no number of days (and past 4300 digits int() itself refuses).
    if len(digits) > 9 and digits.isascii() and digits.isdigit():
        raise BadInput(path, line, f"days must be at most 9 digits, not {len(digits)}")
    days = whole_count(value)
    if days is None:
        reason = f"days must be a whole number, not {quoted(value)}"
        if in_exponent_notation(value):
            reason += " (exponent notation: write the days in digits)"
        raise BadInput(path, line, reason)
    if days < 1:
        raise BadInput(path, line, "days must be at least 1")
    return days


def _requested_at(path: Path, line: int, value: str, now: datetime) -> datetime:
    """A request's time, naive UTC, from the first day a date may take (a plan's) to now."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadInput(path, line, f"requested_at is not a time: {quoted(value)}") from None
    # Its UTC from 1970 on (a time past the supported days is past now too).
    at = supported_utc(moment)
    if at is None:
        reason = f"requested_at {quoted(value)} is not between {FIRST_DAY} and now"
        raise BadInput(path, line, reason)
    if at > now:
        raise BadInput(path, line, f"requested_at {at} is in the future")
    return at


def snooze_phase(phase: Phase) -> Phase:
    """The phase, if it lets accounts snooze; else why not, as bad input."""
    if phase.deadline is None:
        raise BadInput(
            None,
            None,
            f"phase {phase.name} has one deadline for everyone ({phase.enforce_on}): "
            "nothing to snooze",
        )
    if phase.deadline.snooze_days == 0:
        raise BadInput(None, None, f"phase {phase.name} allows no snooze (snooze_days: 0)")
    return phase


# Why a request read again is refused when it was refused and answered before.
ANSWERED_BEFORE = "refused before, and answered by email"


@dataclass(frozen=True)
class _Known:
    """What judging a batch of requests reads of their accounts: a query each, per few
    thousand accounts (rollout.registry.batches)."""

    in_cohort: set[int]
    snoozed: dict[int, tuple[int, datetime]]  # days, requested_at
    deadlines: dict[int, date]
    enforced: set[int]
    replied: set[tuple[int, str]]  # (account, occasion) of the replies queued already


def _judge(
    phase: Phase,
    request: SnoozeRequest,
    account_id: int | None,
    known: _Known,
    exempt: frozenset[str] = frozenset(),
) -> SnoozeOutcome:
    """Whether one request is granted, and why not: for the release manager, and in
    the maintainer's own terms for the reply (a cohort's name means nothing to them)."""
    assert phase.deadline is not None
    most = phase.deadline.snooze_days
    own = known.deadlines

    def refused(reason: str, told: str, deadline: date | None = None) -> SnoozeOutcome:
        return SnoozeOutcome(
            request.username, request.days, "refused", reason, deadline, told, account_id
        )

    if account_id is None:
        return refused("no such account", "")
    if (account_id, reply_occasion(request, granted=False)) in known.replied:
        # Refused, and told so: the same request read again stays refused, even if it
        # would pass now (it was told to ask again, not that it would be granted).
        return refused(ANSWERED_BEFORE, "", own.get(account_id))
    if account_id not in known.in_cohort:
        return refused(
            f"not in cohort {phase.cohort}",
            "this step of the campaign does not apply to your account, so it has no "
            "deadline to postpone",
        )
    if account_id in known.snoozed:
        days, at = known.snoozed[account_id]
        if days == request.days and (at == request.requested_at or not request.requested_at_given):
            return SnoozeOutcome(
                request.username, days, "already", "granted before", own.get(account_id)
            )
        return refused(
            f"already postponed once, by {counted(days, 'day')}",
            f"your deadline was postponed once already, by {counted(days, 'day')}, and can be "
            "postponed only once",
            own.get(account_id),
        )
    if request.username in exempt:
        # Sent no notice (rollout.notify.queue), so no deadline, ever: not one that
        # "starts with our first email", which never comes.
        return refused(
            "exempt by the plan",
            "your account is exempt from this step of the campaign: it has no deadline to postpone",
            own.get(account_id),
        )
    if account_id not in own:
        return refused(
            "never sent the notice: its deadline has not started",
            "your deadline has not started yet: it starts with our first email about "
            "this, and you can ask then",
        )
    if request.days > most:
        return refused(
            f"at most {counted(most, 'day')}",
            f"a deadline can be postponed by at most {counted(most, 'day')}: ask again for "
            f"{counted(most, 'day')} or fewer",
            own[account_id],
        )
    # The deadline is 00:00 UTC of its day (the emails say so), and enforcement acts on
    # that day (rollout.registry.deadlines.due_by): asked on the day is asked after it,
    # as that day's reminders and replies say ("it has passed").
    if request.requested_at.date() >= own[account_id]:
        return refused(
            f"asked on or after its deadline ({own[account_id]}, 00:00 UTC)",
            "the request came after your deadline had passed",
            own[account_id],
        )
    # Nor before the notice that started the deadline: no one asks to postpone what they
    # were not yet told of (a mistyped date, or a request meant for another phase).
    noticed = own[account_id] - timedelta(days=phase.deadline.days_after_notice)
    if request.requested_at.date() < noticed:
        return refused(
            f"asked before its notice ({noticed})",
            f"the request is dated before our first email about this ({noticed})",
            own[account_id],
        )
    if account_id in known.enforced:
        return refused(
            "the phase was enforced on it already",
            "the requirements were applied to your account already",
            own[account_id],
        )
    new = own[account_id] + timedelta(days=request.days)
    return SnoozeOutcome(
        request.username,
        request.days,
        "granted",
        f"deadline moved to {new}",
        new,
        account_id=account_id,
    )


def _judge_all(
    connection: Connection,
    phase: Phase,
    requests: list[SnoozeRequest],
    exempt: frozenset[str] = frozenset(),
) -> tuple[list[SnoozeOutcome], dict[str, int]]:
    """Each request's outcome, and the account ids of the usernames found."""
    usernames = sorted({r.username for r in requests})
    ids: dict[str, int] = {}
    for names in in_chunks(usernames):  # a file's requests: as many as it holds
        ids.update(
            connection.execute(
                select(ACCOUNTS.c.username, ACCOUNTS.c.id).where(ACCOUNTS.c.username.in_(names))
            ).all()
        )
    m, q = CohortMembership, REQUIREMENTS.c
    n = NOTIFICATIONS.c
    known = _Known(in_cohort=set(), snoozed={}, deadlines={}, enforced=set(), replied=set())
    for accounts in in_chunks(sorted(ids.values())):
        known.in_cohort.update(
            connection.execute(
                current_members(phase.cohort).where(m.account_id.in_(accounts))
            ).scalars()
        )
        known.snoozed.update(
            (account_id, (days, at))
            for account_id, days, at in connection.execute(
                select(SNOOZES.c.account_id, SNOOZES.c.days, SNOOZES.c.requested_at).where(
                    and_(SNOOZES.c.phase == phase.name, SNOOZES.c.account_id.in_(accounts))
                )
            )
        )
        known.deadlines.update(deadlines(connection, phase, accounts))
        known.enforced.update(
            connection.execute(
                select(q.account_id).where(and_(q.phase == phase.name, q.account_id.in_(accounts)))
            ).scalars()
        )
        known.replied.update(
            (account_id, occasion)
            for account_id, occasion in connection.execute(
                select(n.account_id, n.occasion).where(
                    and_(
                        n.email == REPLY_EMAIL,
                        n.phase == phase.name,
                        n.account_id.in_(accounts),
                    )
                )
            )
        )
    outcomes = []
    for request in requests:
        outcome = _judge(phase, request, ids.get(request.username), known, exempt)
        if outcome.account_id is not None:
            occasion = reply_occasion(request, granted=outcome.outcome == "granted")
            if (outcome.account_id, occasion) not in known.replied:
                outcome = replace(outcome, reply=occasion)
        outcomes.append(outcome)
    return outcomes, ids


def snooze_preview(
    registry: Registry, plan: Plan, phase_name: str, requests: list[SnoozeRequest]
) -> list[SnoozeOutcome]:
    """What ``snooze`` would grant and refuse. Reads only."""
    phase = snooze_phase(plan.phase(phase_name))
    with registry.engine.connect() as connection:
        return _judge_all(connection, phase, requests, plan.exempt_usernames)[0]


def snooze(
    registry: Registry,
    plan: Plan,
    phase_name: str,
    requests: list[SnoozeRequest],
    *,
    actor: str,
    now: datetime | None = None,
) -> list[SnoozeOutcome]:
    """Grant or refuse each request, in one transaction; one audit row per grant."""
    phase = snooze_phase(plan.phase(phase_name))
    now = now or utc_now()
    with registry.lock(LOCK) as held:
        engine = registry.engine
        with recorded_run(
            engine,
            plan=plan.name,
            step=snooze_step(phase.name),
            mode="apply",
            actor=actor,
            lock=LOCK,
            parameters={
                "phase": phase.name,
                "requests": len(requests),
                REQUESTS_FINGERPRINT: requests_fingerprint(requests),
            },
        ) as run:
            with begin_writing(engine) as connection:
                outcomes, ids = _judge_all(connection, phase, requests, plan.exempt_usernames)
                granted = [
                    (r, o, ids[r.username])
                    for r, o in zip(requests, outcomes, strict=True)
                    if o.outcome == "granted"
                ]
                if granted:
                    connection.execute(
                        dialect_insert(connection, SNOOZES).on_conflict_do_nothing(
                            index_elements=["phase", "account_id"]
                        ),
                        [
                            {
                                "phase": phase.name,
                                "account_id": account_id,
                                "days": r.days,
                                "requested_at": r.requested_at,
                                "granted_at": now,
                                "source": r.source,
                                "actor": actor,
                                "run_id": run.id,
                            }
                            for r, _, account_id in granted
                        ],
                    )
                    record_actions(
                        connection,
                        [
                            {
                                "effect_key": f"snooze:{phase.name}:{account_id}",
                                "action": "snooze_deadline",
                                "account_id": account_id,
                                "phase": phase.name,
                                "reason": f"postponed by {counted(r.days, 'day')} to {o.deadline}",
                                "actor": actor,
                                "run_id": run.id,
                                "details": {
                                    "source": r.source,
                                    "requested_at": r.requested_at.isoformat(),
                                    "deadline": o.deadline.isoformat() if o.deadline else None,
                                },
                            }
                            for r, o, account_id in granted
                        ],
                    )
                _queue_replies(connection, phase, outcomes, run.id, now)
                held.check()  # before the commit: no grant beside another snooze run
            run.summary = {
                kind: sum(o.outcome == kind for o in outcomes)
                for kind in ("granted", "already", "refused")
            }
    return outcomes


def replies_owed(outcomes: list[SnoozeOutcome]) -> int:
    """How many of these outcomes a run would answer by email (snooze_reply): each grant
    and each refusal of an account, unless answered already."""
    return sum(o.reply is not None for o in outcomes)


def _queue_replies(
    connection: Connection,
    phase: Phase,
    outcomes: list[SnoozeOutcome],
    run_id: str,
    now: datetime,
) -> None:
    """One snooze_reply to each account asking, in the grant's transaction: the answer
    goes out exactly once, whatever crashes (notify send sends it; an unverified or
    suppressed address is skipped there, as for every email)."""
    queue_each(
        connection,
        email=REPLY_EMAIL,
        phase=phase.name,
        emails=[
            (
                o.account_id,
                o.reply,
                {
                    "phase": phase.name,
                    "granted": o.outcome == "granted",
                    "days": o.days,
                    "deadline": o.deadline.isoformat() if o.deadline else None,
                    "reason": o.told,
                },
            )
            for o in outcomes
            if o.account_id is not None and o.reply is not None
        ],
        run_id=run_id,
        now=now,
    )


# Where the registry's site lands request files: landing/snoozes/<phase>/*.csv.
LANDING_FOLDER = "snoozes"


@dataclass
class LandedSnoozes:
    """What the daily pickup of landed request files did."""

    granted: int = 0
    already: int = 0
    # Refused on an earlier day and answered then: the file read again. Counted, not
    # listed: each day's artifact would list every refusal of the campaign again.
    answered_before: int = 0
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # file, user, why
    rejected: list[str] = field(default_factory=list)  # whole files refused, with why


def _landed_files(root: Path) -> tuple[list[Path], list[str]]:
    """The request files under ``root`` (``<phase>/*.csv``, in path order), and the files
    named like one that are not where or what a request file is, each refused with why:
    a file directly under ``snoozes/`` or in a folder below a phase's, or a compressed
    one. Passed over, their requests went unanswered unsaid, and the accounts asking
    were held to their deadlines. A hidden file (a writer's, before its rename) and a
    file named otherwise (notes.txt, a download's .part) are left alone."""
    files: list[Path] = []
    misplaced: list[str] = []
    if not root.is_dir():
        return files, misplaced
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(s for s in subfolders if not s.startswith("."))
        depth = len(Path(folder).relative_to(root).parts)
        for link in [Path(folder) / s for s in subfolders if (Path(folder) / s).is_symlink()]:
            # os.walk does not follow it: its request files were passed over, unsaid.
            misplaced.append(
                f"{link}: a symbolic link to a folder: request files are read only from the "
                f"folders in {root} themselves; move the files into {root}/<phase>/"
            )
        for name in sorted(names):
            path = Path(folder) / name
            suffixes = [s.lower() for s in path.suffixes]
            if name.startswith(".") or ".csv" not in suffixes:
                continue
            if suffixes[-1] != ".csv":
                if suffixes[-1] in COMPRESSED_SUFFIXES and suffixes[-2] == ".csv":
                    misplaced.append(
                        f"{path}: compressed as {suffixes[-1]}: a request file is plain CSV"
                    )
                continue
            if links_outside(path, root):
                # Never read: its refusal would quote what it points to (a secret).
                misplaced.append(
                    f"{path}: a symbolic link to a file outside {root}: request files are "
                    "read only from there; copy the file there instead"
                )
            elif depth == 1:
                files.append(path)
            else:
                where = "directly under" if depth == 0 else "in a folder below a phase's in"
                misplaced.append(
                    f"{path}: {where} {root}: a request file goes in the folder of its phase, "
                    f"{root}/<phase>/"
                )
    # A subfolder named like a request file is read, and refused as no file to read.
    files.extend(p for p in root.glob("*/*.csv") if p.is_dir())
    return sorted(files), misplaced


def grant_landed(
    registry: Registry, plan: Plan, landing_dir: Path, *, actor: str, now: datetime | None = None
) -> LandedSnoozes:
    """Grant the requests of every file under ``landing/snoozes/<phase>/``. A file is
    read whole or refused whole (a bad line, or a folder naming no phase that allows a
    snooze): it is reported, the others go on. Reading a file again grants nothing
    twice (its grants come back as ``already``, its answered refusals as
    ``answered_before``)."""
    now = now or utc_now()
    done = LandedSnoozes()
    files, misplaced = _landed_files(landing_dir / LANDING_FOLDER)
    done.rejected.extend(misplaced)
    for path in files:
        name = path.parent.name
        try:
            phase = snooze_phase(plan.phase(name))
            requests = read_requests(path, now)
        except BadInput as error:
            # The file, and the line where there is one (a phase the folder names
            # that is not in the plan is an error of no file: it gets this one's name).
            done.rejected.append(str(error) if error.path else f"{path}: {error.reason}")
            continue
        # Judged first, read-only: a file read again (its grants "already", its
        # refusals answered) records no run.
        outcomes = snooze_preview(registry, plan, phase.name, requests)
        if any(o.outcome == "granted" for o in outcomes) or replies_owed(outcomes):
            outcomes = snooze(registry, plan, phase.name, requests, actor=actor, now=now)
        for request, outcome in zip(requests, outcomes, strict=True):
            if outcome.outcome == "granted":
                done.granted += 1
            elif outcome.outcome == "already":
                done.already += 1
            elif outcome.reason == ANSWERED_BEFORE:
                done.answered_before += 1
            else:
                done.refused.append((path.name, request.username, outcome.reason))
    return done
