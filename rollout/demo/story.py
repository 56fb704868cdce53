"""The demo: the reference plan run day by day over a simulated calendar.

Each day the real jobs run under a simulated clock (:mod:`rollout.core.clock`), at the
hours a deployment would run them: metrics and cohorts at 02:30, ELV for all at
00:00 on its day, enforcement at 10:00 on a phase's day (preview, then the
previewed count typed back), the day's emails at 09:00 to the file outbox. After the
day's jobs, from 11:00 (``DAY_FROM``), maintainers respond (:class:`Responses`): every
act is dated after the jobs that, run earlier, could not have seen it (a factor dated
08:00, written after the 10:00 enforcement, made an account enforced or reminded with
2FA by its own record). Some enrol in 2FA after a notice or a
reminder, more after being challenged during a brown-out, most once enforcement
signs them out. Every login is recorded as a landing login event, with the ELV
challenge the registry would have made, so the warehouse sees what users did.

Before day one the registry is rewound to the calendar's start: the 2FA factors,
tokens and web sessions the sample dated later are held back and added on their day
(the factors are the organic adoption the program adds to), the removals and
revocations it dated later are undone and applied on their day, and the sample's
login events after the start are dropped.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Engine, and_, bindparam, delete, insert, or_, select, update

from rollout import cohorts, metrics, warehouse
from rollout.core.calendar import plan_calendar
from rollout.core.clock import SimulatedClock, use_clock
from rollout.core.controls import shell_word, visible
from rollout.core.errors import EXIT_BAD_INPUT, BadInput, GuardRefused, RolloutError
from rollout.core.files import make_folder, written_in_place
from rollout.core.plan import Phase, Plan
from rollout.core.words import counted
from rollout.demo.sample import (
    SAMPLE_MARK,
    Locations,
    check_locations,
    is_marked,
    registry_contents,
)
from rollout.notify.delivery import apply_delivery
from rollout.notify.drain import drain
from rollout.notify.queue import queue_due
from rollout.notify.senders import FileSender
from rollout.phases import brownouts, enforce, snoozes
from rollout.phases.snoozes import SnoozeRequest
from rollout.registry import Registry
from rollout.registry.batches import in_chunks
from rollout.registry.models import (
    Account,
    BrownoutWindow,
    Notification,
    TfaFactor,
    Token,
    WebSession,
)
from rollout.registry.requirements import offending_token
from rollout.report.reporting import ReportFiles, report_from_registry
from rollout.runtime import Runtime
from rollout.warehouse import extract, ingest

ACTOR = "demo"
STORY_LOGINS = "logins-story.parquet"
STORY_PUBLISHES = "publishes-story.parquet"
DEAD_MAILBOX = "550 5.1.1 The email account that you tried to reach does not exist"


@dataclass(frozen=True)
class Responses:
    """How maintainers respond: daily chances of enrolling in 2FA, and of logging in."""

    login_active: float = 0.06  # accounts that logged in within 90 days of the start
    login_dormant: float = 0.004
    after_notice: float = 0.03  # each day in the 14 days after a phase notice
    after_reminder: float = 0.05  # each day in the 3 days after a reminder
    after_challenge: float = 0.12  # the day an account meets an ELV challenge
    # A brown-out bites harder: that day, and each of the week after (the rehearsal
    # made the point; people set 2FA up when they next have a minute).
    after_brownout: float = 0.25
    week_after_brownout: float = 0.05
    at_forced_setup: float = 0.7  # a signed-out account told to set up 2FA at login
    elv_outcomes: tuple[float, float, float] = (0.8, 0.05, 0.15)  # success, failed, abandoned
    webauthn_share: float = 0.4
    # Publishing goes on: a token used in the 90 days before the start is used again
    # on a day with this chance (CI and release days), any other unrevoked one rarely.
    token_in_use: float = 0.3
    token_idle: float = 0.002
    # Of a writing token's uses, the share that publish (landing/publishes/): CI also
    # installs with it; the sample's maintainers publish a package about weekly then.
    publish_per_write_use: float = 0.25
    # A maintainer reminded of its own deadline asks for more time, where a phase allows.
    snooze_when_reminded: float = 0.1
    # Accounts whose address no longer takes mail: their first email bounces, SendGrid
    # drops the later ones (the address is on its bounce list), and they never hear of
    # the campaign until enforcement signs them out.
    dead_mailbox: float = 0.02


@dataclass
class StoryReport:
    start: date
    end: date
    enrolled: Counter[str] = field(default_factory=Counter)  # by cause
    emails: Counter[str] = field(default_factory=Counter)  # sent, by email
    enforced: dict[str, int] = field(default_factory=dict)  # phase -> accounts it requires
    tokens_revoked: dict[str, int] = field(default_factory=dict)  # phase -> tokens it revoked
    tokens_replaced: int = 0  # classic tokens maintainers replaced before a deadline
    snoozed: int = 0  # own deadlines postponed on request
    bounced: int = 0  # accounts an email to bounced (a dead mailbox)
    unreached_enforced: dict[str, int] = field(default_factory=dict)  # phase -> unwarned
    sessions_revoked: int = 0
    elv_enrolled: int = 0
    logins: int = 0
    elv_challenges: int = 0
    token_uses: int = 0
    publishes: int = 0  # of token_uses, publishes (a writing token's use, now and then)
    milestones: list[tuple[date, str]] = field(default_factory=list)
    seconds: float = 0.0
    job_seconds: Counter[str] = field(default_factory=Counter)
    files: ReportFiles | None = None
    # population ("all", "cohort:top-100", ...) -> 2FA share at the start and at the end
    # (adoption_daily; None: no row that day).
    shares: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    # The same days' security-key share (webauthn / accounts): what a phase asking a
    # security key (two_factor: phishing_resistant) counts.
    key_shares: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    # Cohorts ("cohort:high-impact") built with nobody in them: no share, 0 accounts.
    selected_no_one: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """What `rollout demo` prints: snake_case keys, as every --format json record;
        counts by phase, cause or job are an object under one key (``enforced``:
        {"top-100": 48}), as a phase's name is no key a script could know beforehand."""
        return {
            "days": (self.end - self.start).days + 1,
            "logins": self.logins,
            "elv_challenges": self.elv_challenges,
            "token_uses": self.token_uses,
            "publishes": self.publishes,
            "emails_sent": self.emails["sent"],
            "maintainers_bounced": self.bounced,
            "never_reached_enforced": dict(self.unreached_enforced),
            "enforced": dict(self.enforced),
            "tokens_revoked": {phase: n for phase, n in self.tokens_revoked.items() if n},
            "tokens_replaced_by_maintainers": self.tokens_replaced,
            "deadlines_snoozed": self.snoozed,
            "sessions_revoked": self.sessions_revoked,
            "elv_enrolled": self.elv_enrolled,
            "enrolled_after": dict(sorted(self.enrolled.items())),
            "seconds": round(self.seconds, 1),
            "job_seconds": {job: round(t, 1) for job, t in self.job_seconds.items()},
        }


@dataclass
class _People:
    """The registry's accounts as arrays, kept in step with what the story writes."""

    ids: np.ndarray
    usernames: list[str]
    method: np.ndarray  # 0 none, 1 totp, 2 webauthn
    active: np.ndarray  # logged in within 90 days before the start
    index: dict[int, int]
    token_ids: np.ndarray  # unrevoked tokens
    token_in_use: np.ndarray  # of those, used within 90 days before the start


# Days the story runs before a plan's first step and after its last, so the report shows
# where adoption stood before and what followed.
STORY_MARGIN_DAYS = 14


def story_window(plan: Plan) -> tuple[date, date]:
    """The days a plan's story covers: its calendar, with a margin on each side."""
    steps = plan_calendar(plan)
    margin = timedelta(days=STORY_MARGIN_DAYS)
    first = min(step.on for step in steps)
    last = max(step.ends or step.on for step in steps)
    return first - margin, last + margin


def sample_window(plan: Plan) -> tuple[date, int]:
    """The sample a plan's story needs: download history (and the publishes over it)
    through its last cohort day, reaching back over the longest window a cohort rule or
    the metrics sum before its first. As (end, days) for ``generate_sample``."""
    as_ofs = [phase.cohort_as_of for phase in plan.phases]
    windows = [plan.metrics.weekly_window_days, plan.metrics.monthly_window_days]
    for rule in plan.cohorts.values():
        windows.append(rule.download_window_days() or 0)
        if rule.active_within is not None:
            windows.append(rule.active_within.days)
    return max(as_ofs), (max(as_ofs) - min(as_ofs)).days + max(windows) + 1


def calendar(start: date, end: date) -> Iterator[date]:
    day = start
    while day <= end:
        yield day
        day += timedelta(days=1)


# The hour maintainers' acts start on each day of the story: after every job of the day
# (the last, enforcement, at 10:00), since what they do reaches the registry at once.
DAY_FROM = 11


def _at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, clock_time(hour, minute))


# --- rewinding the sample to the start --------------------------------------------------


@dataclass(frozen=True)
class _History:
    """A registry table whose rows begin and may end: the sample dates both."""

    table: Any
    begins: str
    ends: str
    why: str | None  # the column saying why it ended, cleared and restored with it
    last_use: str | None = None  # the row's latest use, which the story dates from then on


_HISTORIES = (
    _History(TfaFactor.__table__, "created_at", "removed_at", None),
    _History(Token.__table__, "created_at", "revoked_at", "revoked_reason", "last_used_at"),
    _History(WebSession.__table__, "created_at", "revoked_at", "revoked_reason", "last_seen_at"),
)


@dataclass
class HeldBack:
    """The sample's history dated on or after the story's start, replayed on its day:
    for each table of ``_HISTORIES`` (by name), by day, the rows it created later (added
    then, under new ids) and the ends it dated later (a factor removed, a token or a
    session revoked: applied then, unless the story ended the row first)."""

    rows: dict[str, dict[date, list[dict[str, Any]]]] = field(default_factory=dict)
    ends: dict[str, dict[date, list[dict[str, Any]]]] = field(default_factory=dict)
    # By table, a held-back row's id in the sample -> its id once added (``replay``);
    # an end marked "held" is of a held-back row, so by its sample id.
    renumbered: dict[str, dict[int, int]] = field(default_factory=dict)


def require_sample(registry: Registry, locations: Locations) -> None:
    """Refuse, before anything is changed, to play the story on a registry `rollout
    sample` did not make (GuardRefused), or without its landing files (BadInput), or
    on a landing folder, outbox, reports folder or warehouse that is not the sample's
    (GuardRefused: check_locations). The story rewinds the registry (deleting the
    sessions, tokens and factors dated after its start), adds its own, queues and sends
    emails, and enforces: on a production registry, named by the deployments'
    ROLLOUT_REGISTRY_URL, that is real lock-outs. It rewrites the landing folder's login
    and publish events, loads the sample into the warehouse and writes emails, reports
    and previews: in production's home, or production's warehouse (ROLLOUT_HOME or
    ROLLOUT_WAREHOUSE left on them), that is production's data."""
    landing_dir = locations.landing
    contents = registry_contents(registry)
    if not contents.is_sample:
        raise GuardRefused(
            f"refusing to play the demo on it: {contents.url} holds a registry `rollout "
            "sample` did not make; the demo rewinds, changes and enforces on the registry "
            "it is given. Nothing was changed. Point ROLLOUT_HOME (and ROLLOUT_REGISTRY_URL, "
            "ROLLOUT_WAREHOUSE) at a scratch home and run `rollout sample` there first, or "
            "`make demo`."
        )
    if not contents.complete:
        # Its registry is whole, its landing folder only part of it: the story would
        # rewind the registry, then ingest and enforce over part of the sample as if whole.
        again = contents.made_by or "rollout sample"
        raise GuardRefused(
            f"refusing to play the demo on it: {contents.url} holds an unfinished sample "
            "registry (the `rollout sample` run that wrote it stopped before its landing "
            "files were all written: the demo would ingest only part of the sample). "
            f"Nothing was changed. Write the sample whole first: {again} --replace --confirm "
            f"{shell_word(contents.name)}"
        )
    if not landing_dir.is_dir():
        raise BadInput(landing_dir, None, "no such file or folder (`rollout sample` writes it)")
    if not is_marked(landing_dir):
        raise GuardRefused(
            f"refusing to play the demo on ROLLOUT_HOME's landing folder {visible(landing_dir)}: "
            f"it has no {SAMPLE_MARK}, so `rollout sample` did not write it. Nothing was "
            "changed. Point ROLLOUT_HOME at the sample's home, or run `rollout sample` in a "
            "scratch one (`make demo`)."
        )
    check_locations(locations)


def require_cohorts_before_start(registry: Registry, plan: Plan, start: date, end: date) -> None:
    """Refuse (exit 2, on --start), before anything is changed, a calendar starting
    after a phase's cohort day with a step of that phase in it (its notices, reminders
    or enforcement), unless the registry holds a build of the cohort (a story that
    played its day): the story builds a cohort on its day only, so those emails would
    go to no one, silently, and its enforcement would stop the story there ("has never
    been built"), weeks into it."""
    phases = {phase.name: phase for phase in plan.phases if phase.cohort_as_of < start}
    played = [
        (max(step.on, start), step, phases[step.subject])
        for step in plan_calendar(plan)
        if step.kind in ("notice", "reminder", "enforce")
        and step.subject in phases
        and max(step.on, start) <= min(step.ends or step.on, end)
    ]
    if not played:
        return
    with registry.engine.connect() as connection:
        unbuilt = [
            (day, step, phase)
            for day, step, phase in played
            if not enforce.cohort_built(connection, phase.cohort)
        ]
    if not unbuilt:
        return
    # The earliest cohort day: the latest --start that plays every such step.
    day, step, phase = min(unbuilt, key=lambda found: (found[2].cohort_as_of, found[0]))
    after = max(phase.enforce_until for _, _, phase in unbuilt)
    raise RolloutError(
        f"--start {start} is after {phase.cohort_as_of}, the day cohort {phase.cohort} is "
        f"fixed, and the calendar plays {step.label} on {day} with no build of it in the "
        "registry: the story builds a cohort on its day only, so the phase's emails would "
        "reach no one and its enforcement would stop the story. Nothing was changed. Give "
        f"--start {phase.cohort_as_of} or earlier (once a story has played that day, a later "
        f"--start plays too), or one after {after}"
    ).with_exit(EXIT_BAD_INPUT)


_DOWNLOAD_DAY = re.compile(r"downloads-(\d{4}-\d{2}-\d{2})\.")


def require_download_history(
    registry: Registry, landing_dir: Path, plan: Plan, start: date, end: date
) -> None:
    """Refuse (GuardRefused), before anything is changed, a sample whose download
    history stops before a cohort day of the calendar: the story computes metrics and
    builds cohorts only on days its downloads reach (the day after the last one at
    most), so that cohort would never be built and its phase would stop the story on
    its day ("has never been built"), weeks into it. A plain `rollout sample` ends its
    history on 2022-01-31; `--for-plan` fits it to the plan's cohort days."""
    days = []
    downloads = landing_dir / "downloads"
    if downloads.is_dir():
        for path in downloads.iterdir():
            found = _DOWNLOAD_DAY.match(path.name)
            if found:
                with contextlib.suppress(ValueError):
                    days.append(date.fromisoformat(found.group(1)))
    last = max(days, default=None)
    short = sorted(
        {
            (phase.cohort_as_of, phase.cohort)
            for phase in plan.phases
            if start <= phase.cohort_as_of <= end
            and (last is None or phase.cohort_as_of > last + timedelta(days=1))
        }
    )
    if not short:
        return
    day, cohort = short[0]
    contents = registry_contents(registry)
    made = re.sub(r" --(end|days|for-plan)\b( \S+)?", "", contents.made_by or "rollout sample")
    history = f"ends on {last}" if last is not None else f"has no download files in {downloads}"
    raise GuardRefused(
        f"refusing to play the demo on this sample: its download history {history}, "
        f"so cohort {cohort} cannot be built on its day, {day}, and its phase would stop "
        f"the story there. Nothing was changed. Write a sample fitted to the plan's cohort days: "
        f"{made} --for-plan --replace --confirm {shell_word(contents.name)}"
    )


def rewind(registry: Registry, landing_dir: Path, start: date) -> HeldBack:
    """The registry as it stood when ``start`` began: factors, tokens and web sessions
    the sample dated on or after it are held back, and the removals and revocations it
    dated then undone, all returned to replay on their day (``replay``); the sample's
    login and publish events from ``start`` on are dropped (the story writes its own),
    and the delivery events an earlier story wrote. Without this, an account the sample
    gives 2FA in March met the February deadline, and a token it revokes in April was
    gone in December."""
    cutoff = _at(start, 0)
    held = HeldBack()
    with registry.engine.begin() as connection:
        for history in _HISTORIES:
            table = history.table
            begins, ends = table.c[history.begins], table.c[history.ends]
            ended = [history.ends, *([history.why] if history.why else [])]
            later = [
                dict(row._mapping)
                for row in connection.execute(
                    select(table).where(begins >= cutoff).order_by(begins, table.c.id)
                )
            ]
            connection.execute(delete(table).where(begins >= cutoff))
            endings = [
                {"id": row["id"], "held": True, **{column: row[column] for column in ended}}
                for row in later
                if row[history.ends] is not None
            ]
            endings += [
                {**row._mapping, "held": False}
                for row in connection.execute(
                    select(table.c.id, *(table.c[column] for column in ended))
                    .where(and_(begins < cutoff, ends >= cutoff))
                    .order_by(table.c.id)
                )
            ]
            connection.execute(update(table).where(ends >= cutoff).values(dict.fromkeys(ended)))
            for row in later:
                row.update(dict.fromkeys(ended))  # added live; its end comes on its day
            if history.last_use is not None:
                # A use the sample dated later has not happened yet: the rows there are
                # were last used before the start at the latest (a token replaced in the
                # story's first week was otherwise "used" weeks after it was revoked),
                # and those held back are unused until the story uses them.
                last_use = table.c[history.last_use]
                connection.execute(
                    update(table)
                    .where(last_use >= cutoff)
                    .values({history.last_use: cutoff - timedelta(microseconds=1)})
                )
                for row in later:
                    row[history.last_use] = None
            held.rows[table.name] = _by_day(later, history.begins)
            held.ends[table.name] = _by_day(
                sorted(endings, key=lambda row: (row[history.ends], row["id"])), history.ends
            )
    for path in (landing_dir / "events").glob("events-story-*.json"):
        path.unlink()
    stories = (("logins", STORY_LOGINS), ("publishes", STORY_PUBLISHES))
    for folder, story_file in stories:
        for path in sorted((landing_dir / folder).glob("*.parquet")):
            if path.name == story_file:
                path.unlink()
            else:
                _drop_events_from(path, cutoff)
    return held


def _drop_events_from(path: Path, cutoff: datetime) -> None:
    """Drop a landed events file's rows from ``cutoff`` on: the story writes its own."""
    events = pq.read_table(path)
    times = events.column("occurred_at").cast(pa.timestamp("us")).to_numpy()
    keep = times < np.datetime64(cutoff, "us")
    if not keep.all():
        with written_in_place(path) as temporary:
            pq.write_table(events.filter(pa.array(keep)), temporary)


def _by_day(rows: list[dict[str, Any]], column: str) -> dict[date, list[dict[str, Any]]]:
    days: dict[date, list[dict[str, Any]]] = {}
    for row in rows:
        days.setdefault(row[column].date(), []).append(row)
    return days


@dataclass(frozen=True)
class Replayed:
    """What ``replay`` did on a day, by table name: the rows it added (with their new
    ids) and the ids of those it ended."""

    added: dict[str, list[dict[str, Any]]]
    ended: dict[str, list[int]]


def _due(by_day: dict[date, list[dict[str, Any]]], column: str, until: datetime) -> list[Any]:
    """The rows dated before ``until``, taken out of ``by_day`` (each replayed once)."""
    due = []
    for day in sorted(d for d in by_day if d <= until.date()):
        rows = by_day[day]
        due += [row for row in rows if row[column] < until]
        by_day[day] = [row for row in rows if row[column] >= until]
    return due


def replay(connection: Any, held: HeldBack, until: datetime) -> Replayed:
    """Add the held-back rows the sample dated before ``until`` and end those it ended
    by then (a row the story ended already, e.g. a session enforcement revoked, keeps
    its own end), each once: called before each job of a day with the job's time, so a
    job sees what happened before it and nothing after."""
    added: dict[str, list[dict[str, Any]]] = {}
    ended: dict[str, list[int]] = {}
    for history in _HISTORIES:
        table = history.table
        name = table.name
        today = _due(held.rows[name], history.begins, until)
        added[name] = []
        if today:
            # New ids: on SQLite the story's own rows (a factor enrolled, a token made)
            # took the ids the held-back rows had, the largest being gone.
            fresh = connection.execute(
                insert(table).returning(table.c.id, sort_by_parameter_order=True),
                [{k: v for k, v in row.items() if k != "id"} for row in today],
            ).scalars()
            renumbered = held.renumbered.setdefault(name, {})
            for row, new_id in zip(today, fresh, strict=True):
                renumbered[row["id"]] = new_id
                added[name].append({**row, "id": new_id})
        ended[name] = []
        for row in _due(held.ends[name], history.ends, until):
            row_id = held.renumbered[name][row["id"]] if row["held"] else row["id"]
            done = connection.execute(
                update(table)
                .where(and_(table.c.id == row_id, table.c[history.ends].is_(None)))
                .values({k: v for k, v in row.items() if k not in ("id", "held")})
            )
            if done.rowcount:
                ended[name].append(row_id)
    return Replayed(added, ended)


def _people(engine: Engine, start: date) -> _People:
    with engine.connect() as connection:
        accounts = connection.execute(
            select(Account.id, Account.username, Account.last_login_at).order_by(Account.id)
        ).all()
        kinds = connection.execute(
            select(TfaFactor.account_id, TfaFactor.kind).where(TfaFactor.removed_at.is_(None))
        ).all()
        unrevoked = Token.revoked_at.is_(None)
        tokens = connection.execute(
            select(Token.id, Token.last_used_at).where(unrevoked).order_by(Token.id)
        ).all()
    ids = np.array([a.id for a in accounts], dtype=np.int64)
    index = {int(i): n for n, i in enumerate(ids)}
    method = np.zeros(len(ids), np.int8)
    for account_id, kind in kinds:
        n = index[account_id]
        method[n] = max(method[n], 2 if kind == "webauthn" else 1)
    recent = _at(start, 0) - timedelta(days=90)
    active = np.array([a.last_login_at is not None and a.last_login_at >= recent for a in accounts])
    token_ids = np.array([t.id for t in tokens], dtype=np.int64)
    in_use = np.array(
        [t.last_used_at is not None and t.last_used_at >= recent for t in tokens], dtype=bool
    )
    return _People(ids, [a.username for a in accounts], method, active, index, token_ids, in_use)


# --- one day ------------------------------------------------------------------------------


class Story:
    """The plan played day by day from ``start`` to ``end`` through ``runtime``: its
    settings, plan, registry and warehouse (``rollout demo`` passes the command's)."""

    def __init__(
        self,
        runtime: Runtime,
        start: date,
        end: date,
        *,
        seed: int = 7,
        responses: Responses | None = None,
        metrics_every: int = 1,
        cohorts_every: int = 1,
        log: Callable[[str], None] = lambda _: None,
        on_day: Callable[[date, int, int], None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.settings = settings = runtime.settings
        self.plan = plan = runtime.plan
        self.token_days = story_token_days(plan)  # how long a replacement token lasts
        self.registry = runtime.registry
        self.start, self.end = start, end
        self.rng = np.random.default_rng(seed)
        self.responses = responses or Responses()
        self.metrics_every = metrics_every
        self.cohorts_every = cohorts_every
        self.log = log
        self.on_day = on_day  # (day, its number from 1, days in all) as each day starts
        self.clock = SimulatedClock(_at(start, 0))
        self.report = StoryReport(start, end)
        self.sender = FileSender(
            settings.outbox_dir,
            from_address=plan.notifications.from_address,
            from_name=plan.notifications.from_name,
            clock=lambda: self.clock().replace(tzinfo=UTC),
        )
        self.events: list[tuple[datetime, str, str, str]] = []
        # Publishes through writing tokens: (at, package, username, token kind, factor).
        self.publishes: list[tuple[datetime, str, str, str, str]] = []
        self.publish_rng = np.random.default_rng(seed + 2)  # apart: the story stays the same
        self.package_of: dict[str, str] = {}  # username -> a package it maintains
        # The mail provider's side: what became of each email sent (delivery events).
        self.provider_rng = np.random.default_rng(seed + 1)
        self.dead: set[int] = set()  # account ids whose mailbox is dead
        self.bounced: set[int] = set()  # of them, those an email bounced from
        self.last_sent_id = 0  # the last notification the provider told about
        self.story_id = uuid.uuid4().hex[:12]
        self.brownout_challenged: dict[int, date] = {}  # account index -> day challenged
        self.last_download_day: date | None = None

    # The jobs, each as its deployment would run it, at the simulated hour.

    def _move(self, day: date, hour: int, minute: int = 0) -> None:
        self.clock.move_to(max(self.clock(), _at(day, hour, minute)))

    @contextmanager
    def _timed(self, job: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.report.job_seconds[job] += time.perf_counter() - started

    def _milestone(self, day: date, what: str) -> None:
        self.report.milestones.append((day, what))
        self.log(f"{day}  {what}")

    def metrics_and_cohorts(self, con: Any, day: date) -> None:
        if self.last_download_day is None or day > self.last_download_day + timedelta(days=1):
            return  # no download data for the week before: metrics would report a gap
        as_of_days = {p.cohort_as_of for p in self.plan.phases}
        age = (day - self.start).days
        if day not in as_of_days and age % self.metrics_every:
            return
        metrics.compute_metrics(con, day, self.plan.metrics)
        if day in as_of_days or age % self.cohorts_every == 0:
            results = cohorts.build_cohorts(
                con,
                self.registry,
                self.plan,
                day,
                actor=ACTOR,
                allow_gaps=True,
            )
            if day in as_of_days:
                sizes = ", ".join(f"{r.cohort} {counted(r.accounts, 'account')}" for r in results)
                self._milestone(day, f"cohorts fixed: {sizes}")

    def emails(self, day: date) -> None:
        queued = queue_due(self.registry, self.plan, day, actor=ACTOR)
        for o in queued:
            if o.added:
                skipped = f" (and {o.skipped} recorded as skipped, each with why)"
                self._milestone(
                    day,
                    f"{o.occasion.step}: {counted(o.added - o.skipped, 'email')} queued"
                    + (skipped if o.skipped else ""),
                )
        result = drain(self.registry, self.plan, self.sender, concurrency=16)
        self.report.emails["sent"] += result.sent
        self.write_delivery_events(day)

    def write_delivery_events(self, day: date) -> Path | None:
        """What SendGrid's Event Webhook would post about the emails sent since the last
        call, as the receiver lands it (``landing/events/``): processed, then delivered,
        or for a dead mailbox a bounce (the first time) and drops after."""
        with self.registry.engine.connect() as connection:
            sent = connection.execute(
                select(
                    Notification.id,
                    Notification.account_id,
                    Notification.email,
                    Notification.message_id,
                    Account.email,
                )
                .join(Account, Account.id == Notification.account_id)
                .where(Notification.state == "sent", Notification.id > self.last_sent_id)
                .order_by(Notification.id)
            ).all()
        if not sent:
            return None
        self.last_sent_id = sent[-1][0]
        stamp = int(_at(day, 9, 5).replace(tzinfo=UTC).timestamp())
        events: list[dict[str, Any]] = []
        for outbox_id, account_id, email, message_id, address in sent:
            about = {
                "email": address,
                "outbox_id": str(outbox_id),
                "email_name": email,
                # SendGrid's message id, with its suffix: what ties an event to its send.
                "sg_message_id": f"{message_id}.filter0001.1.0",
            }
            if account_id in self.bounced:
                outcome = [("dropped", 0, {"reason": "Bounced Address"})]
            elif account_id in self.dead:
                self.bounced.add(account_id)
                bounce = {"type": "bounce", "reason": DEAD_MAILBOX}
                outcome = [("processed", 0, {}), ("bounce", 30, bounce)]
            else:
                outcome = [("processed", 0, {}), ("delivered", 20, {"response": "250 OK"})]
            events += [
                {
                    **about,
                    "timestamp": stamp + after,
                    "event": kind,
                    # Unique across stories too: a second one may reuse the outbox ids.
                    "sg_event_id": f"story-{self.story_id}-{outbox_id}-{kind}",
                    **fields,
                }
                for kind, after, fields in outcome
            ]
        self.report.bounced = len(self.bounced)
        path = self.settings.landing_dir / "events" / f"events-story-{day:%Y%m%d}.json"
        with written_in_place(path) as temporary:
            temporary.write_text(json.dumps(events))
        return path

    def load_delivery_events(self, con: Any) -> None:
        """Ingest the landed events and give each notification its state, as the daily
        run's ingest does (before enforcement reads who was reached, and the report)."""
        events = self.settings.landing_dir / "events"
        if not events.exists():
            return
        ingest.ingest(
            con,
            [events],
            quarantine_limit=self.settings.quarantine_limit,
            landing_root=self.settings.landing_dir,
            now=self.clock(),
        )
        apply_delivery(con, self.registry)

    def enforcement(self, con: Any, day: date) -> None:
        """Each phase on its day; a phase with per-account deadlines every day of its
        window, on the accounts whose own deadline has come (on no day without one).
        Who the warnings reached is known first (the delivery events landed so far)."""
        due = [p for p in self.plan.phases if p.enforce_on <= day <= p.enforce_until]
        if due:
            self.load_delivery_events(con)
        for phase in due:
            preview = enforce.preview_phase(self.registry, self.plan, phase)
            if phase.deadline is not None and not (preview.newly_required or preview.token_count):
                continue
            result = enforce.enforce_phase(
                self.registry,
                self.plan,
                phase.name,
                expect=preview.count,
                expect_tokens=preview.token_count if phase.does("revoke_tokens") else None,
                # A release manager who read the preview's never-reached list and went on.
                accept_unreached=len(preview.unreached),
                actor=ACTOR,
            )
            report = self.report
            report.unreached_enforced[phase.name] = (
                report.unreached_enforced.get(phase.name, 0) + result.accounts_unreached
            )
            report.enforced[phase.name] = (
                report.enforced.get(phase.name, 0) + result.accounts_required
            )
            report.sessions_revoked += result.sessions_revoked
            report.tokens_revoked[phase.name] = (
                report.tokens_revoked.get(phase.name, 0) + result.tokens_revoked
            )
            self._milestone(day, f"phase {phase.name} enforced: {_did(phase, result)}")

    def elv_for_all(self, day: date) -> None:
        if self.plan.elv is None or day != self.plan.elv.enroll_all_on:
            return
        enrolled = brownouts.enroll_all(self.registry, self.plan, actor=ACTOR)
        self.report.elv_enrolled = enrolled
        self._milestone(day, f"ELV for all: {counted(enrolled, 'account')} enrolled")

    # What maintainers do.

    def _recent_emails(self, engine: Engine, day: date) -> tuple[set[int], set[int]]:
        """Accounts sent a phase notice in the last 14 days, and a reminder in the last 3."""
        with engine.connect() as connection:

            def sent(email: str, days: int) -> set[int]:
                since = _at(day, 0) - timedelta(days=days)
                return {
                    row[0]
                    for row in connection.execute(
                        select(Notification.account_id).where(
                            and_(
                                Notification.email == email,
                                Notification.state == "sent",
                                Notification.sent_at >= since,
                            )
                        )
                    )
                }

            return sent("phase_notice", 14), sent("reminder", 3)

    def _elv_state(self, engine: Engine, day: date) -> tuple[np.ndarray, np.ndarray, list[Any]]:
        """Who is enrolled in ELV, and who is required to use 2FA, by the end of ``day``."""
        end_of_day = _at(day, 23, 59)
        with engine.connect() as connection:
            # Compared in SQL: ids only, not 12k rows of timestamps parsed every day.
            elv = connection.execute(
                select(Account.id).where(Account.elv_enrolled_at <= end_of_day)
            ).scalars()
            enrolled = self._mask(elv)
            required = self._mask(
                connection.execute(
                    select(Account.id).where(Account.tfa_required_at <= end_of_day)
                ).scalars()
            )
            windows = connection.execute(select(BrownoutWindow)).all()
        return enrolled, required, windows

    def _mask(self, account_ids: Iterable[int]) -> np.ndarray:
        mask = np.zeros(len(self.people.ids), bool)
        index = self.people.index
        mask[np.fromiter((index[i] for i in account_ids if i in index), np.int64)] = True
        return mask

    def respond(self, day: date, held: HeldBack) -> None:
        p, r, rng = self.people, self.responses, self.rng
        engine = self.registry.engine
        new_factors: list[dict[str, Any]] = []

        def enrol(n: int, at: datetime, cause: str, *, key: bool = False) -> None:
            kind = "webauthn" if key or rng.random() < r.webauthn_share else "totp"
            p.method[n] = 2 if kind == "webauthn" else 1
            new_factors.append({"account_id": int(p.ids[n]), "kind": kind, "created_at": at})
            self.report.enrolled[cause] += 1

        self.replay(_at(day + timedelta(days=1), 0), held)  # the rest of the day
        notified, reminded = self._recent_emails(engine, day)
        elv_enrolled, required, windows = self._elv_state(engine, day)

        # Logins, through the day: what each account meets at the door.
        chance = np.where(p.active, r.login_active, r.login_dormant)
        who = np.flatnonzero(rng.random(len(p.ids)) < chance)
        seconds = rng.integers(DAY_FROM * 3600, 23 * 3600, len(who))
        for n, second in zip(who, seconds, strict=True):
            at = _at(day, 0) + timedelta(seconds=int(second))
            if p.method[n]:
                self._login(at, n, "webauthn" if p.method[n] == 2 else "totp", "success")
            elif required[n]:
                # Signed out and told to set up 2FA: most do it there and then.
                if rng.random() < r.at_forced_setup:
                    enrol(n, at, "enforcement")
                    self._login(at, n, "webauthn" if p.method[n] == 2 else "totp", "success")
                else:
                    self._login(at, n, "none", "abandoned")
            elif elv_enrolled[n] or any(w.starts_at <= at < _window_end(w) for w in windows):
                outcome = rng.choice(["success", "failed", "abandoned"], p=r.elv_outcomes)
                self._login(at, n, "elv", str(outcome))
                self.report.elv_challenges += 1
                in_brownout = any(w.starts_at <= at < _window_end(w) for w in windows)
                if in_brownout:
                    self.brownout_challenged[n] = day
                odds = r.after_brownout if in_brownout else r.after_challenge / 6
                if rng.random() < odds:
                    enrol(n, at + timedelta(minutes=5), "brown-out" if in_brownout else "ELV")
            else:
                self._login(at, n, "none", "success")

        # The week after a brown-out, those it challenged come back to it.
        for n, challenged_on in list(self.brownout_challenged.items()):
            if p.method[n] or (day - challenged_on).days > 7:
                del self.brownout_challenged[n]
            elif day > challenged_on and rng.random() < r.week_after_brownout:
                enrol(n, _at(day, int(rng.integers(DAY_FROM, 22))), "brown-out")

        # Emails read at some point in the day. While a phase asks for a security key, an
        # account with TOTP alone is short too: it adds a key.
        wants_key = any(
            phase.requires.two_factor == "phishing_resistant" for phase in self._live(day)
        )
        for account_id in notified | reminded:
            n = p.index.get(account_id)
            if n is None or p.method[n] == 2 or (p.method[n] == 1 and not wants_key):
                continue
            odds = r.after_reminder if account_id in reminded else r.after_notice
            # Drawn for everyone, so a dead mailbox changes no one else's story.
            reads = rng.random() < odds
            if reads and account_id not in self.dead:
                at = _at(day, int(rng.integers(DAY_FROM, 22)), int(rng.integers(0, 60)))
                enrol(n, at, "reminder" if account_id in reminded else "notice", key=wants_key)
        self.replace_tokens(day, notified, reminded)
        self.snooze(day, reminded)

        if new_factors:
            with engine.begin() as connection:
                connection.execute(insert(TfaFactor), new_factors)
        self.renew_tokens(day)
        self.use_tokens(day)

    def replay(self, until: datetime, held: HeldBack) -> None:
        """The sample's own history before ``until`` (``rewind``), and the people in step
        with it: a factor added is organic adoption, one removed may leave its account
        without 2FA, a token added is used as it was, a token revoked is no longer."""
        p = self.people
        with self.registry.engine.begin() as connection:
            done = replay(connection, held, until)
            factors = TfaFactor.__table__
            touched = [row["account_id"] for row in done.added["tfa_factors"]]
            removed = done.ended["tfa_factors"]
            if removed:
                touched += connection.execute(
                    select(factors.c.account_id).where(factors.c.id.in_(removed))
                ).scalars()
            kinds: dict[int, int] = dict.fromkeys(touched, 0)
            for account_id, kind in connection.execute(
                select(factors.c.account_id, factors.c.kind).where(
                    and_(factors.c.account_id.in_(sorted(kinds)), factors.c.removed_at.is_(None))
                )
            ):
                kinds[account_id] = max(kinds[account_id], 2 if kind == "webauthn" else 1)
        for account_id, method in kinds.items():
            n = p.index.get(account_id)
            if n is not None:
                p.method[n] = method
        self.report.enrolled["organic"] += len(done.added["tfa_factors"])
        added = [(row["id"], row["last_used_at"] is not None) for row in done.added["tokens"]]
        if added:
            p.token_ids = np.concatenate([p.token_ids, np.array([i for i, _ in added], np.int64)])
            p.token_in_use = np.concatenate([p.token_in_use, np.array([u for _, u in added])])
        if done.ended["tokens"]:
            keep = ~np.isin(p.token_ids, np.array(done.ended["tokens"], np.int64))
            p.token_ids, p.token_in_use = p.token_ids[keep], p.token_in_use[keep]

    def _live(self, day: date) -> list[Phase]:
        """The phases maintainers hear of on ``day``: from their notice to their last
        day of enforcement."""
        return [p for p in self.plan.phases if p.notice_on <= day <= p.enforce_until]

    def snooze(self, day: date, reminded: set[int]) -> None:
        """Some reminded maintainers still short ask to postpone their own deadline, by
        as many days as the phase allows (granted once: rollout.phases.snoozes)."""
        p, rng = self.people, self.rng
        phases = [
            phase for phase in self._live(day) if phase.deadline and phase.deadline.snooze_days
        ]
        if not phases or not reminded:
            return
        asking = [
            p.usernames[n]
            for account_id in sorted(reminded)
            if (n := p.index.get(account_id)) is not None
            and not p.method[n]
            and rng.random() < self.responses.snooze_when_reminded
        ]
        at = _at(day, DAY_FROM + 1)
        for phase in phases:
            assert phase.deadline is not None
            requests = [
                SnoozeRequest(name, phase.deadline.snooze_days, at, "demo") for name in asking
            ]
            if requests:
                outcomes = snoozes.snooze(
                    self.registry, self.plan, phase.name, requests, actor=ACTOR, now=at
                )
                self.report.snoozed += sum(o.outcome == "granted" for o in outcomes)

    def replace_tokens(self, day: date, notified: set[int], reminded: set[int]) -> None:
        """Maintainers told their tokens will stop working move their CI to a granular
        token (no 2FA bypass, lasting as long as the plan allows: story_token_days) and
        revoke the old ones themselves, with the odds of enrolling after a notice or a
        reminder. Only for the phases whose fix is a new
        token: not PyPI's, where an account's tokens stop for want of 2FA."""
        p, r, rng = self.people, self.responses, self.rng
        phases = [
            phase
            for phase in self._live(day)
            if (
                phase.requires.no_classic_tokens
                or phase.requires.no_unnamed_tokens
                or phase.requires.no_bypass_2fa_tokens
                or phase.requires.token_max_age_days is not None
                or phase.requires.write_token_cap is not None
            )
        ]
        readers = notified | reminded
        if not phases or not readers:
            return
        at = _at(day, int(rng.integers(DAY_FROM, 22)), int(rng.integers(0, 60)))
        tokens = Token.__table__
        with self.registry.engine.begin() as connection:
            held: dict[int, set[int]] = {}
            for phase in phases:
                for token_id, account_id in connection.execute(
                    select(tokens.c.id, tokens.c.account_id).where(
                        and_(
                            tokens.c.account_id.in_(sorted(readers)),
                            offending_token(phase.requires, tokens, at),
                        )
                    )
                ):
                    held.setdefault(account_id, set()).add(token_id)
            movers = [
                account_id
                for account_id in sorted(held)
                if rng.random() < (r.after_reminder if account_id in reminded else r.after_notice)
            ]
            if not movers:
                return
            old = sorted(t for account_id in movers for t in held[account_id])
            connection.execute(
                update(tokens)
                .where(tokens.c.id.in_(old))
                .values(revoked_at=at, revoked_reason="replaced by its maintainer")
            )
            new_ids = connection.execute(
                insert(tokens).returning(tokens.c.id),
                [story_token(account_id, at, self.token_days) for account_id in movers],
            ).scalars()
            fresh = np.fromiter(new_ids, np.int64)
        keep = ~np.isin(p.token_ids, np.array(old, np.int64))
        # The new token is used as the old ones were: CI publishes with it.
        p.token_ids = np.concatenate([p.token_ids[keep], fresh])
        p.token_in_use = np.concatenate([p.token_in_use[keep], np.ones(len(fresh), bool)])
        self.report.tokens_replaced += len(old)

    def renew_tokens(self, day: date) -> None:
        """A granular token the story made lasts ``token_days`` (90): in its last week
        (its last quarter, when it lasts less than four weeks) its maintainer makes the
        next one, as CI keeps publishing (the old one just expires). Without this the
        token plans' stories fell silent 90 days after the replacements."""
        p = self.people
        at = _at(day, DAY_FROM)
        tokens = Token.__table__
        newer = Token.__table__.alias("newer")
        renew_within = min(7, -(-self.token_days // 4))
        with self.registry.engine.begin() as connection:
            expiring = (
                connection.execute(
                    select(tokens.c.account_id).where(
                        and_(
                            tokens.c.name == STORY_TOKEN,
                            tokens.c.revoked_at.is_(None),
                            tokens.c.expires_at >= at,
                            tokens.c.expires_at < at + timedelta(days=renew_within),
                            ~select(newer.c.id)
                            .where(
                                and_(
                                    newer.c.account_id == tokens.c.account_id,
                                    newer.c.name == STORY_TOKEN,
                                    newer.c.created_at > tokens.c.created_at,
                                )
                            )
                            .exists(),
                        )
                    )
                )
                .scalars()
                .all()
            )
            if not expiring:
                return
            fresh = np.fromiter(
                connection.execute(
                    insert(tokens).returning(tokens.c.id),
                    [
                        story_token(account_id, at, self.token_days)
                        for account_id in sorted(set(expiring))
                    ],
                ).scalars(),
                np.int64,
            )
        p.token_ids = np.concatenate([p.token_ids, fresh])
        p.token_in_use = np.concatenate([p.token_in_use, np.ones(len(fresh), bool)])

    def use_tokens(self, day: date) -> None:
        """Tokens used today: a token's last use only moves forward (the sample may
        have dated one later than the simulated day), and a token revoked (by a phase)
        or expired by then is not used: it no longer works."""
        p, r, rng = self.people, self.responses, self.rng
        chance = np.where(p.token_in_use, r.token_in_use, r.token_idle)
        used = p.token_ids[rng.random(len(p.token_ids)) < chance]
        if not used.size:
            return
        seconds = rng.integers(DAY_FROM * 3600, 24 * 3600, len(used))
        uses = [
            {"token_id": int(i), "used_at": _at(day, 0) + timedelta(seconds=int(s))}
            for i, s in zip(used, seconds, strict=True)
        ]
        tokens = Token.__table__
        last_used = tokens.c.last_used_at
        used_at = bindparam("used_at")
        with self.registry.engine.begin() as connection:
            connection.execute(
                update(tokens)
                .where(tokens.c.id == bindparam("token_id"))
                # A token made later in the day (a replacement, a renewal) is not used
                # before it exists.
                .where(tokens.c.created_at <= used_at)
                .where(or_(last_used.is_(None), last_used < used_at))
                .where(or_(tokens.c.revoked_at.is_(None), tokens.c.revoked_at > used_at))
                .where(or_(tokens.c.expires_at.is_(None), tokens.c.expires_at > used_at))
                .values(last_used_at=used_at),
                uses,
            )
            self._publish(connection, uses)
        self.report.token_uses += len(uses)

    def _publish(self, connection: Any, uses: list[dict[str, Any]]) -> None:
        """Some uses of a writing token, live when used (made, not yet revoked nor
        expired), are publishes of a package its account maintains: what the report's
        Publishing section and the token-hardening funnel read (landing/publishes/,
        written with the logins at the end). The second factor is the account's, none
        through an automation token or one that bypasses 2FA."""
        p, rng = self.people, self.publish_rng
        chosen = [u for u in uses if rng.random() < self.responses.publish_per_write_use]
        if not chosen or not self.package_of:
            return
        tokens = Token.__table__
        found = {
            row.id: row
            for ids in in_chunks(sorted({u["token_id"] for u in chosen}))
            for row in connection.execute(
                select(
                    tokens.c.id,
                    tokens.c.account_id,
                    tokens.c.kind,
                    tokens.c.bypass_2fa,
                    tokens.c.created_at,
                    tokens.c.revoked_at,
                    tokens.c.expires_at,
                ).where(and_(tokens.c.id.in_(ids), tokens.c.writes))
            )
        }
        for use in chosen:
            token, at = found.get(use["token_id"]), use["used_at"]
            if token is None or (n := p.index.get(token.account_id)) is None:
                continue
            if token.kind == "read_only" or at < token.created_at:
                continue
            if any(end is not None and end <= at for end in (token.revoked_at, token.expires_at)):
                continue
            username = p.usernames[n]
            package = self.package_of.get(username)
            if package is None:
                continue
            none = token.kind == "automation" or token.bypass_2fa or not p.method[n]
            factor = "none" if none else ("webauthn" if p.method[n] == 2 else "totp")
            self.publishes.append((at, package, username, token.kind, factor))

    def write_publishes(self) -> Path:
        events = sorted(self.publishes)
        self.report.publishes = len(events)
        columns = {
            "occurred_at": [e[0] for e in events],
            "package": [e[1] for e in events],
            "username": [e[2] for e in events],
            "via": ["token"] * len(events),
            "token_kind": [e[3] for e in events],
            "second_factor": [e[4] for e in events],
        }
        return self._write_events("publishes", STORY_PUBLISHES, columns)

    def _login(self, at: datetime, n: int, second_factor: str, outcome: str) -> None:
        self.events.append((at, self.people.usernames[n], second_factor, outcome))
        self.report.logins += 1

    def write_logins(self) -> Path:
        events = sorted(self.events)
        columns = ("occurred_at", "username", "second_factor", "outcome")
        rows = {name: [e[i] for e in events] for i, name in enumerate(columns)}
        return self._write_events("logins", STORY_LOGINS, rows)

    def _write_events(self, folder: str, name: str, columns: dict[str, list[Any]]) -> Path:
        """The story's events of one kind as a landing file (``occurred_at`` UTC, every
        other column text), whole or not at all."""
        path = self.settings.landing_dir / folder / name
        make_folder(path.parent)
        table = pa.table(
            {
                column: pa.array(
                    values,
                    pa.timestamp("us", tz="UTC") if column == "occurred_at" else pa.string(),
                )
                for column, values in columns.items()
            }
        )
        with written_in_place(path) as temporary:
            pq.write_table(table, temporary)
        return path

    # The whole calendar.

    def run(self) -> StoryReport:
        started = time.perf_counter()
        settings, registry = self.settings, self.registry
        require_sample(registry, Locations.of(settings))
        require_cohorts_before_start(registry, self.plan, self.start, self.end)
        require_download_history(registry, settings.landing_dir, self.plan, self.start, self.end)
        held = rewind(registry, settings.landing_dir, self.start)
        self.people = _people(registry.engine, self.start)
        ids = self.people.ids
        dead = self.provider_rng.random(len(ids)) < self.responses.dead_mailbox
        self.dead = {int(i) for i in ids[dead]}
        with use_clock(self.clock), self.runtime.warehouse(create=True) as con:
            ingest.ingest(
                con,
                [settings.landing_dir],
                quarantine_limit=settings.quarantine_limit,
                landing_root=settings.landing_dir,
            )
            self.last_download_day = warehouse.scalar(con, "select max(day) from stg_downloads")
            self.package_of = _package_of_each_maintainer(con)
            self._move(self.start, 1)
            brownouts.schedule(registry, self.plan, actor=ACTOR)
            days = (self.end - self.start).days + 1
            for number, day in enumerate(calendar(self.start, self.end), start=1):
                if self.on_day is not None:
                    self.on_day(day, number, days)
                self._move(day, 0)
                with self._timed("elv"):
                    self.elv_for_all(day)
                # Each job sees the sample's own history of the day up to its hour
                # (a factor it dates 08:00 spares its account the 10:00 enforcement).
                self._move(day, 2, 30)
                self.replay(_at(day, 2, 30), held)
                with self._timed("metrics and cohorts"):
                    self.metrics_and_cohorts(con, day)
                self._move(day, 9)
                self.replay(_at(day, 9), held)
                with self._timed("emails"):
                    self.emails(day)
                self._move(day, 10)
                self.replay(_at(day, 10), held)
                with self._timed("enforcement"):
                    self.enforcement(con, day)
                for b in self.plan.brownouts:
                    if b.starts_at.date() == day:
                        self._milestone(day, f"{b.name}: {b.hours} h of ELV for all without 2FA")
                self._move(day, DAY_FROM)
                with self._timed("maintainers"):
                    self.respond(day, held)
            self._move(self.end, 23, 59)
            ingest.ingest(
                con,
                [self.write_logins(), self.write_publishes()],
                quarantine_limit=settings.quarantine_limit,
                landing_root=settings.landing_dir,
            )
            self.load_delivery_events(con)
            extract.extract_registry(con, registry)
            with self._timed("report"):
                self.report.files = report_from_registry(
                    con,
                    registry,
                    self.plan,
                    self.end,
                    settings.reports_dir,
                    refresh_registry=False,
                )
            self.report.shares = _shares(con, self.start, self.end)
            self.report.key_shares = _shares(con, self.start, self.end, security_key=True)
            self.report.selected_no_one = _selected_no_one(con, self.end)
        self.report.seconds = time.perf_counter() - started
        return self.report


# The granular token a maintainer moves its CI to in the story (and renews before it
# expires): no 2FA bypass, lasting 90 days (npm's 2025 cap on write tokens), or less
# when the plan allows less (story_token_days).
STORY_TOKEN = "ci-granular"
STORY_TOKEN_DAYS = 90


def story_token_days(plan: Plan) -> int:
    """How many days the story's granular token lasts: 90, or the fewest a token rule of
    the plan allows a publishing token (a cap on how long it is valid for, on every token
    or on publishing ones; a maximum age, which a token that expires by then never
    reaches while it works). A replacement lasting 90 days under a 30-day cap broke the
    very rule it replaced a token for, and was revoked in turn."""
    days = [STORY_TOKEN_DAYS]
    for phase in plan.phases:
        r = phase.requires
        days += [d for d in (r.write_token_cap, r.token_max_age_days) if d is not None]
    return min(days)


def story_token(account_id: int, at: datetime, days: int) -> dict[str, Any]:
    return {
        "account_id": account_id,
        "name": STORY_TOKEN,
        "kind": "granular",
        "writes": True,
        "bypass_2fa": False,
        "created_at": at,
        "expires_at": at + timedelta(days=days),
    }


def _package_of_each_maintainer(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """A package each maintainer maintains (the first by name, of the latest manifests):
    what its token publishes in the story."""
    rows = con.execute(
        "select username, min(package) from "
        "(select package, unnest(maintainers) as username from stg_manifests) "
        "group by username"
    ).fetchall()
    return {str(username): str(package) for username, package in rows}


def applies_in_words(phase: Any) -> str:
    """What the accounts an enforcement applies to (``accounts_required``) are, in the
    story's words: "required to use 2FA" only where that is what they lack; a phase with
    token rules or asking for a security key also applies to accounts with 2FA (a stale
    token, TOTP alone), as its summary email says ("short of its requirements")."""
    if phase.does("require_2fa") and phase.requires.asks_only_2fa:
        return "required to use 2FA"
    return "it applies to"


def _did(phase: Any, result: Any) -> str:
    """What one enforcement run did, in the milestone's words."""
    said = []
    if phase.does("require_2fa"):
        said.append(f"{counted(result.accounts_required, 'account')} {applies_in_words(phase)}")
    if phase.does("revoke_sessions"):
        said.append(f"{counted(result.sessions_revoked, 'web session')} revoked")
    if phase.does("revoke_tokens"):
        said.append(f"{counted(result.tokens_revoked, 'token')} revoked")
    if phase.does("warn"):
        said.append(f"{counted(result.accounts_warned, 'account')} shown the banner")
    if phase.does("close_totp_enrolment"):
        said.append(
            f"{counted(result.totp_enrolment_closed, 'account')} closed to new TOTP set-ups"
        )
    return ", ".join(said)


def _shares(
    con: Any, start: date, end: date, *, security_key: bool = False
) -> dict[str, tuple[float | None, float | None]]:
    """Each population's 2FA share (with ``security_key``, its share with a security
    key: webauthn / accounts) on the start (its last day up to then, else its first)
    and on the end (its last day up to then), from ``adoption_daily``. A cohort's days
    before its first member are none of its own (they read "0% -> 96%")."""
    share = "share"
    if security_key:
        share = "case when accounts > 0 then webauthn / accounts else 0.0 end"
    rows = con.execute(
        f"select population, day, {share} from adoption_daily where day <= ? and "
        "(population = 'all' or accounts > 0 or day > (select min(day) from adoption_daily "
        "as first where first.population = adoption_daily.population and first.accounts > 0)) "
        "order by day",
        [end],
    ).fetchall()
    shares: dict[str, tuple[float | None, float | None]] = {}
    for population, day, share in rows:
        before, _ = shares.get(population, (None, None))
        if before is None or day <= start:
            before = share
        shares[population] = (before, share)
    return shares


def _selected_no_one(con: Any, end: date) -> list[str]:
    """The cohorts built with nobody in them by ``end``: rows in ``adoption_daily`` (a
    build made them), none with an account. They have no share, and the report shows
    them with 0 accounts ("built: selected no one"); a cohort not built by then has no
    rows at all."""
    rows = con.execute(
        "select population from adoption_daily where day <= ? and population <> 'all' "
        "group by population having max(accounts) = 0 order by population",
        [end],
    ).fetchall()
    return [str(population) for (population,) in rows]


def _window_end(window: Any) -> datetime:
    return window.ended_early_at or window.ends_at
