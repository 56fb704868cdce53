"""The plan file: cohorts, phases, thresholds and dates, validated with line numbers.

A plan is YAML (``plans/npm-2022.yaml`` is the reference). ``load_plan`` returns a
validated ``Plan`` or raises ``BadInput`` naming the file, the line and the reason,
for the first of all the problems found (``plan_problems`` lists them all).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from itertools import combinations, pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from rollout.core.clock import naive_utc
from rollout.core.controls import control_found, quoted
from rollout.core.errors import BadInput
from rollout.core.files import MIB, read_whole, utf8_text
from rollout.core.names import SAFE_NAME_RULE, is_safe_name
from rollout.core.words import counted, percent


class _Strict(BaseModel):
    # Every plan model refuses fields it does not know: a typo is an error, not a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- the value types of a plan ------------------------------------------------------
# Numbers are strict (``true`` is not 1, ``1.5`` and ``"7"`` are not 7) and every count,
# number of days or limit carries its bounds where it is declared.


def _safe_name(value: str) -> str:
    if not is_safe_name(value):
        raise ValueError(f"{quoted(value)} cannot be a name: use {SAFE_NAME_RULE} characters")
    return value


# A phase, cohort or brown-out name: it becomes part of file names and ledger keys.
Name = Annotated[str, AfterValidator(_safe_name)]


# What pydantic reads as seconds since 1970 when it is text: digits, a sign, a point.
_NUMBER_TEXT = re.compile(r"\s*[-+]?(?:\d+\.?\d*|\.\d+)\s*")


def _no_number(expected: str) -> BeforeValidator:
    def refuse(value: object) -> object:
        # YAML reads 20220301 as a number, which pydantic would take as seconds since 1970;
        # quoted ('20220301', as a templated plan writes "${DAY}") it does the same.
        if isinstance(value, int | float) or (
            isinstance(value, str) and _NUMBER_TEXT.fullmatch(value)
        ):
            raise ValueError(f"expected {expected}, not a number")
        return value

    return BeforeValidator(refuse)


# The days a plan, and a day given on the command line, may name. Python's dates end
# at 9999-12-31, so a step computed from a date near either end (a heads-up 60 days
# before, a brown-out's end, a report's chart axis) overflowed: a bound this far inside
# leaves every such offset room, and a campaign of this tool's fits many times over.
FIRST_DAY = date(1970, 1, 1)
LAST_DAY = date(2199, 12, 31)
SUPPORTED_DAYS = f"between {FIRST_DAY} and {LAST_DAY}"


def is_supported_day(day: date) -> bool:
    """Whether a day is in the range every date of the pipeline may take."""
    return FIRST_DAY <= day <= LAST_DAY


def _supported_day(value: date) -> date:
    if not is_supported_day(value):
        raise ValueError(f"{value} is out of range: plan dates are {SUPPORTED_DAYS}")
    return value


def supported_utc(value: datetime) -> datetime | None:
    """``value`` as naive UTC when that falls on a supported day, else None. Converted
    before it is checked, as the range is UTC's; a conversion past Python's last year
    (9999-12-31T23:00-05:00) is out of range too, not an OverflowError."""
    try:
        moment = naive_utc(value)
    except OverflowError:
        return None
    return moment if is_supported_day(moment.date()) else None


def _supported_moment(value: datetime) -> datetime:
    moment = supported_utc(value)
    if moment is None:
        raise ValueError(f"{value} is out of range: plan times are {SUPPORTED_DAYS} (UTC)")
    return moment


# A day as written: YYYY-MM-DD. pydantic also reads a time at midnight as its day,
# whatever its offset: 2022-03-01T00:00:00+05:00 is 2022-02-28 19:00 UTC, and was
# taken as 2022-03-01 (a time later that day was refused). A day is given as a day.
_DAY_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _day_as_written(value: object) -> object:
    if isinstance(value, datetime):  # YAML read it as a time: it had one
        raise ValueError(
            f"expected a date, YYYY-MM-DD, not a time ({value.isoformat()}): a day is "
            "given without a time or offset"
        )
    if isinstance(value, str) and not _DAY_TEXT.fullmatch(value):
        raise ValueError(f"expected a date, YYYY-MM-DD, not {quoted(value)}")
    return value


# (pydantic runs the before-validators last to first: a number is refused as one first.)
Day = Annotated[
    date,
    BeforeValidator(_day_as_written),
    _no_number("a date, YYYY-MM-DD"),
    AfterValidator(_supported_day),
]


def _time_as_written(value: object) -> object:
    """A time is given with its time: a day alone (``2022-02-16``, YAML's date or the
    text) was read as its midnight UTC, which a plan meaning the day's start where its
    writer is (or the working day's) does not say. Refused, as a day with a time is."""
    plain_day = isinstance(value, date) and not isinstance(value, datetime)
    if plain_day or (isinstance(value, str) and _DAY_TEXT.fullmatch(value.strip())):
        raise ValueError(
            f"expected a time, YYYY-MM-DDTHH:MM:SS (UTC, or with an offset), not a day "
            f"({str(value).strip()}): write {str(value).strip()}T00:00:00 for its midnight UTC"
        )
    return value


# Times are compared with each other and with the registry's, which are naive UTC: a
# time given with an offset is converted once, here, so every plan time is naive UTC.
Moment = Annotated[
    datetime,
    BeforeValidator(_time_as_written),
    _no_number("a time, YYYY-MM-DDTHH:MM:SS (UTC, or with an offset)"),
    AfterValidator(_supported_moment),
]


def _one_line(value: str) -> str:
    # These go into email headers and every email's links: a line break there would add
    # a header; a C1 control, a line separator or a bidi override (U+202E: the From name
    # read reversed) acts in a mail reader or a terminal, unseen in the plan as written.
    # The terminal's and the emails' set (rollout.core.controls), refused here.
    found = control_found(value)
    if found is not None:
        raise ValueError(f"must be one line without control characters ({found})")
    return value


OneLine = Annotated[str, AfterValidator(_one_line)]
Url = Annotated[str, Field(pattern=r"^https?://[^\s]+$"), AfterValidator(_one_line)]
Username = Annotated[str, Field(min_length=1, max_length=214), AfterValidator(_one_line)]
# The emails a plan can tune, one per email rollout.notify.emails defines (a test checks).
EmailName = Literal[
    "phase_notice",
    "reminder",
    "enforcement_notice",
    "brownout_heads_up",
    "elv_enrollment",
    "org_removal_notice",
    "org_invitation",
    "org_enforcement_summary",
    "phase_summary",
    "snooze_reply",
]
# The emails a repeat window (``repeat_days``) may hold back: warnings that recur, of
# which one a week is enough. Every other email must go: a phase's notice starts its
# deadlines (an account never sent it is never enforced, or enforced unwarned), the
# enforcement and org emails tell of what was done, a snooze reply answers a request.
RepeatableEmail = Literal["reminder", "brownout_heads_up", "elv_enrollment"]


class MetricsWindows(_Strict):
    weekly_window_days: int = Field(7, strict=True, ge=1, le=90)
    monthly_window_days: int = Field(30, strict=True, ge=1, le=366)


class DownloadsOver(_Strict):
    """More than ``count`` downloads over the ``days`` full days before the as-of day,
    or over every day loaded (``total: true``, RubyGems' "total downloads")."""

    count: int = Field(strict=True, ge=0)
    days: int | None = Field(None, strict=True, ge=1, le=3660)
    total: bool = Field(False, strict=True)

    @model_validator(mode="after")
    def _one_window(self) -> DownloadsOver:
        if (self.days is None) == (not self.total):
            raise ValueError("give exactly one of days (a window) and total: true")
        return self


class TopShare(_Strict):
    """The top ``share`` of packages by downloads over the ``days`` full days before the
    as-of day (PyPI's "critical" projects: the top 1% over 6 months)."""

    share: float = Field(strict=True, gt=0, le=1)
    days: int = Field(strict=True, ge=1, le=3660)


Activity = Literal["published", "logged_in"]


class ActiveWithin(_Strict):
    """Accounts that did one of ``by`` in the ``days`` full days before the as-of day
    (GitHub 2023 chose its groups by activity: who published lately)."""

    days: int = Field(strict=True, ge=1, le=3660)
    by: list[Activity] = Field(default_factory=lambda: ["published", "logged_in"], min_length=1)

    @field_validator("by")
    @classmethod
    def _each_once(cls, by: list[Activity]) -> list[Activity]:
        # As orgs, effects and reminders: a list naming one thing twice is a slip (the
        # emails told the cohort as who "published or published").
        twice = next((activity for activity in by if by.count(activity) > 1), None)
        if twice is not None:
            raise ValueError(f"activity {twice!r} is listed twice")
        return by


class CohortRule(_Strict):
    """Which packages put their maintainers in a cohort. Criteria combine with OR.

    ``active_within`` and ``orgs`` then narrow the accounts those packages give (AND):
    an account enters only if it was active lately, or belongs to one of the orgs. Once
    in, it stays while it can publish the cohort's packages, active or not (membership
    is sticky, as packages are)."""

    description: str = ""
    top_by_dependents: int | None = Field(None, strict=True, ge=1)
    weekly_downloads_gt: int | None = Field(None, strict=True, ge=0)
    dependents_gte: int | None = Field(None, strict=True, ge=1)
    downloads_gt: DownloadsOver | None = None
    top_share_by_downloads: TopShare | None = None
    # Every package: every maintainer of any package is in the cohort.
    every_maintainer: bool = Field(False, strict=True)
    # Account filters, each narrowing the accounts the package criteria give.
    active_within: ActiveWithin | None = None
    # None (left out): no org filter. Given: at least one org, each once (an empty list
    # would read as "no filter" and put every account of the packages in the cohort).
    orgs: list[Username] | None = None

    @field_validator("orgs")
    @classmethod
    def _names_orgs(cls, orgs: list[str] | None) -> list[str] | None:
        if orgs is None:
            return None
        if not orgs:
            raise ValueError(
                "orgs names no org: an empty list would let every account in; name at "
                "least one org, or leave orgs out"
            )
        if len(set(orgs)) < len(orgs):
            twice = next(org for org in orgs if orgs.count(org) > 1)
            raise ValueError(f"org {quoted(twice)} is listed twice")
        return orgs

    @model_validator(mode="after")
    def _has_a_criterion(self) -> CohortRule:
        if (
            self.top_by_dependents is None
            and self.weekly_downloads_gt is None
            and self.dependents_gte is None
            and self.downloads_gt is None
            and self.top_share_by_downloads is None
            and not self.every_maintainer
        ):
            raise ValueError(
                "a cohort needs at least one of top_by_dependents, weekly_downloads_gt, "
                "dependents_gte, downloads_gt, top_share_by_downloads, every_maintainer"
            )
        return self

    def in_words(self) -> str:
        """Who the cohort is, as the emails say it ("Your account is among the ..."): its
        ``description``, or one made from its rule when the plan gives none (the emails
        read "among the :" without one). The description as one line, without a final
        full stop: written over lines (``description: >``, as a plan's own is) it ended
        in a line break, and the sentence around it gives the punctuation ("ecosystem. :"
        and "ecosystem. , your account included" otherwise)."""
        said = " ".join(self.description.split()).rstrip(".").rstrip()
        if said:
            return said
        if self.every_maintainer:
            # Not "maintainers of any package": "Your account is among the maintainers of
            # any package" read as if it were a rule still to be met.
            said = "maintainers of packages on the registry"
        else:
            criteria = []
            if self.top_by_dependents is not None:
                criteria.append(
                    f"are among the {self.top_by_dependents:,} with the most dependents"
                )
            if self.weekly_downloads_gt is not None:
                criteria.append(
                    f"have more than {counted(self.weekly_downloads_gt, 'weekly download')}"
                )
            if self.dependents_gte is not None:
                criteria.append(f"have {self.dependents_gte:,} or more dependents")
            if (over := self.downloads_gt) is not None:
                span = "in all" if over.total else f"over {counted(over.days, 'day')}"
                criteria.append(f"have more than {counted(over.count, 'download')} {span}")
            if (top := self.top_share_by_downloads) is not None:
                criteria.append(
                    f"are in the top {percent(top.share)}% by downloads over "
                    f"{counted(top.days, 'day')}"
                )
            said = "maintainers of packages that " + " or ".join(criteria)
        if self.active_within is not None:
            did = " or ".join(
                {"published": "published", "logged_in": "logged in"}[by]
                for by in self.active_within.by
            )
            said += f" who {did} in the last {counted(self.active_within.days, 'day')}"
        if self.orgs:
            said += f" in the org{'s' if len(self.orgs) > 1 else ''} {', '.join(self.orgs)}"
        return said

    def download_window_days(self) -> int | None:
        """The longest window of full days before the as-of day this rule sums downloads
        over (beyond the metrics' own), so a build can refuse a window with gaps."""
        windows = [
            rule.days
            for rule in (self.downloads_gt, self.top_share_by_downloads)
            if rule is not None and rule.days is not None
        ]
        return max(windows, default=None)

    @property
    def narrowed(self) -> bool:
        """Its account filters (``active_within``, ``orgs``) leave out some maintainers
        of its packages: the emails do not say the packages' maintainers are asked."""
        return self.active_within is not None or self.orgs is not None

    @property
    def by_packages(self) -> bool:
        """Its packages put an account in the cohort (their reach), not merely having
        some: the emails say "your account maintains packages that put it among the
        ..." only then, and a classic notice says why ("so many people depend on
        them"). A cohort of every maintainer picks accounts, not packages."""
        return not self.every_maintainer


class Window(_Strict):
    starts: Day
    ends: Day


# A heads-up goes out from its day until what it announces begins (a brown-out's window,
# to the minute; ELV for all, its day): 0 days before would leave one of midnight no
# time at all.
HeadsUpDays = Annotated[int, Field(strict=True, ge=1, le=60)]


class Elv(_Strict):
    trial: Window | None = None
    enroll_all_on: Day
    heads_up_days_before: HeadsUpDays = 7


class Brownout(_Strict):
    name: Name
    starts_at: Moment
    hours: int = Field(24, strict=True, ge=1, le=168)
    heads_up_days_before: HeadsUpDays = 3

    @property
    def ends_at(self) -> datetime:
        return self.starts_at + timedelta(hours=self.hours)


# What a phase asks of its cohort's accounts and does to those that fall short. The
# defaults are npm 2022's: any 2FA; the flag and the revoked web sessions.
TwoFactor = Literal["any", "phishing_resistant", "none"]
Effect = Literal["warn", "require_2fa", "revoke_sessions", "revoke_tokens", "close_totp_enrolment"]
DEFAULT_EFFECTS: tuple[Effect, ...] = ("require_2fa", "revoke_sessions")
# The effects that act on an account for its missing second factor (the others act on
# its tokens, or only show it a banner).
TWO_FACTOR_EFFECTS: tuple[Effect, ...] = ("require_2fa", "revoke_sessions", "close_totp_enrolment")


class Requirements(_Strict):
    """What a compliant account has (a second factor of a kind) and does not hold
    (tokens of the kinds or age named). An account that falls short of any is a target."""

    # any: TOTP or WebAuthn. phishing_resistant: a WebAuthn factor (TOTP alone falls
    # short). none: the phase asks nothing of the factors (a token-only campaign).
    two_factor: TwoFactor = "any"
    # Live tokens that fall short, each rule on its own (npm 2025: classic tokens;
    # tokens that publish without a second factor; tokens older than N days; tokens
    # valid for more than N days, from their creation to their expiry, or never expiring:
    # npm's 90-day cap of 2025-10-13, which applied to write tokens only: the same cap on
    # the tokens that publish alone, read-only tokens uncapped).
    no_classic_tokens: bool = Field(False, strict=True)
    no_unnamed_tokens: bool = Field(False, strict=True)
    no_bypass_2fa_tokens: bool = Field(False, strict=True)
    token_max_age_days: int | None = Field(None, strict=True, ge=1, le=3660)
    token_max_lifetime_days: int | None = Field(None, strict=True, ge=1, le=3660)
    write_token_max_lifetime_days: int | None = Field(None, strict=True, ge=1, le=3660)
    # PyPI 2024: an account without any second factor may hold no token that publishes
    # (with two_factor: none, the phase asks only that).
    no_write_tokens_without_2fa: bool = Field(False, strict=True)

    @property
    def token_rules(self) -> bool:
        return (
            self.no_classic_tokens
            or self.no_unnamed_tokens
            or self.no_bypass_2fa_tokens
            or self.token_max_age_days is not None
            or self.token_max_lifetime_days is not None
            or self.write_token_max_lifetime_days is not None
            or self.no_write_tokens_without_2fa
        )

    @property
    def write_token_cap(self) -> int | None:
        """The most days a token that publishes may be valid for (the shorter of the
        caps on every token and on publishing tokens), or None when uncapped."""
        caps = [self.token_max_lifetime_days, self.write_token_max_lifetime_days]
        return min((c for c in caps if c is not None), default=None)

    @property
    def asks_only_2fa(self) -> bool:
        """Any second factor, and no token rule: "without 2FA" says who falls short."""
        return self.two_factor == "any" and not self.token_rules

    @model_validator(mode="after")
    def _asks_something(self) -> Requirements:
        if self.two_factor == "none" and not self.token_rules:
            raise ValueError("two_factor: none needs a token rule, or the phase asks nothing")
        return self

    def factor_in_words(self) -> str:
        """The second factor it asks, as a noun phrase that reads inside a sentence of an
        email ("requires of it ..., to sign in and publish", "requires of your account
        ... sooner") and as :meth:`describe`'s first item. Empty for ``two_factor: none``
        (it asks no factor)."""
        return {
            "any": "a second factor (TOTP or a security key)",
            "phishing_resistant": "a security key (WebAuthn, not TOTP alone)",
            "none": "",
        }[self.two_factor]

    def describe(self) -> list[str]:
        """Each requirement in words, for previews, emails and `plan show`: a noun
        phrase each, holding no ``;``, so a list of them joined by ``; `` (the audit
        ledger's reason, the report's ``asks``, a preview's "Requires:", the plan-drift
        refusal) reads back as those items. (It said "a security key (WebAuthn); TOTP
        alone is not enough": two items where there was one.)"""
        factor = self.factor_in_words()
        said = [factor] if factor else []
        if self.no_classic_tokens:
            said.append("no classic tokens")
        if self.no_unnamed_tokens:
            said.append("no unnamed tokens")
        if self.no_bypass_2fa_tokens:
            said.append("no tokens that bypass 2FA")
        if self.token_max_age_days is not None:
            said.append(f"no tokens older than {counted(self.token_max_age_days, 'day')}")
        if self.token_max_lifetime_days is not None:
            said.append(lifetime_in_words(self.token_max_lifetime_days))
        if self.write_token_max_lifetime_days is not None:
            said.append(lifetime_in_words(self.write_token_max_lifetime_days, writes=True))
        if self.no_write_tokens_without_2fa:
            said.append("no publishing tokens without 2FA")
        return said


def lifetime_in_words(days: int, writes: bool = False) -> str:
    """``token_max_lifetime_days`` (or, ``writes``, ``write_token_max_lifetime_days``)
    as a rule in words: a token that never expires is valid for more than any number
    of days."""
    tokens = "publishing tokens" if writes else "tokens"
    return f"no {tokens} valid for more than {counted(days, 'day')}"


# The token rules that are on or off, as Phase.asks records them.
_TOKEN_FLAGS = (
    "no_classic_tokens",
    "no_unnamed_tokens",
    "no_bypass_2fa_tokens",
    "no_write_tokens_without_2fa",
)
_FACTOR_RANK = {"none": 0, "any": 1, "phishing_resistant": 2}


def asks_more_than(told: str, phase: Phase) -> list[str]:
    """What ``phase`` asks or does now beyond ``told`` (a :meth:`Phase.asks` its emails
    recorded), in words: a stronger factor, a token rule it did not have (or a shorter
    age or lifetime), an effect it did not do. Empty when it asks no more, or ``told`` is
    not one."""
    fields = dict(part.partition("=")[::2] for part in told.split(";"))
    if fields.get("two_factor") not in _FACTOR_RANK or "effects" not in fields:
        return []
    now = phase.requires
    more: list[str] = []
    if _FACTOR_RANK[now.two_factor] > _FACTOR_RANK[fields["two_factor"]]:
        more.append(now.factor_in_words())
    every_rule = Requirements(two_factor="none", **dict.fromkeys(_TOKEN_FLAGS, True))
    words = dict(zip(_TOKEN_FLAGS, every_rule.describe(), strict=True))
    more += [words[rule] for rule in _TOKEN_FLAGS if getattr(now, rule) and rule not in fields]
    age = now.token_max_age_days
    told_age = fields.get("token_max_age_days")
    if age is not None and (told_age is None or not told_age.isdigit() or age < int(told_age)):
        more.append(f"no tokens older than {counted(age, 'day')}")
    cap = now.token_max_lifetime_days
    told_cap = fields.get("token_max_lifetime_days")
    if cap is not None and (told_cap is None or not told_cap.isdigit() or cap < int(told_cap)):
        more.append(lifetime_in_words(cap))
    # A cap on publishing tokens asks more when a publishing token may now last less
    # than the caps told allowed it (on every token, or on publishing tokens).
    write_cap = now.write_token_max_lifetime_days
    told_caps = [
        int(c)
        for c in (told_cap, fields.get("write_token_max_lifetime_days"))
        if c is not None and c.isdigit()
    ]
    if write_cap is not None and (not told_caps or write_cap < min(told_caps)):
        more.append(lifetime_in_words(write_cap, writes=True))
    told_effects = set(fields["effects"].split(","))
    more += [f"effect {e}" for e in phase.effects if e not in told_effects]
    return more


class Deadline(_Strict):
    """Each account's own deadline: ``days_after_notice`` days from the day its notice
    was sent (GitHub 2023: 45 days), postponed once by at most ``snooze_days`` (7) on
    request. Notices go out daily, to whoever is newly in the cohort, until
    ``last_notice_on``; enforcement runs daily from the first deadline possible
    (``enforce_on`` = ``notice_on`` + ``days_after_notice``) until the last
    (``Phase.enforce_until``), each day on the accounts whose deadline has come. An
    account that was never sent its notice has no deadline, so it is never enforced."""

    days_after_notice: int = Field(strict=True, ge=1, le=366)
    snooze_days: int = Field(0, strict=True, ge=0, le=90)
    last_notice_on: Day


class Phase(_Strict):
    name: Name
    cohort: Name
    cohort_as_of: Day
    notice_on: Day
    # Whether each falls between the notice and enforcement is checked in plan_problems.
    reminders_days_before: list[Annotated[int, Field(strict=True)]] = Field(default_factory=list)
    enforce_on: Day
    batch_size: int = Field(1000, strict=True, ge=1, le=100_000)
    # The blast-radius guard: enforcement refuses to touch more accounts than this.
    max_accounts: int = Field(strict=True, ge=1)
    requires: Requirements = Requirements()
    effects: list[Effect] = Field(default_factory=lambda: list(DEFAULT_EFFECTS))
    # The same guard for tokens: required when the phase revokes them.
    max_tokens: int | None = Field(None, strict=True, ge=1)
    # Per-account deadlines instead of one date for everyone (None: enforce_on for all).
    deadline: Deadline | None = None
    # The reach guard: enforcement refuses when more than this share of the accounts it
    # would change were never reached by a warning (no notice or reminder delivered),
    # unless their count is typed back (--accept-unreached N). None: no guard (the
    # preview still lists them).
    max_unreached_share: float | None = Field(None, strict=True, ge=0, le=1)
    # The notice to accounts that already meet the phase too (a thank-you): only when
    # the plan asks. Without it they get none (nothing to do; one a day later, if they
    # fall short before the notice's last day).
    notify_compliant: bool = Field(False, strict=True)

    def does(self, effect: Effect) -> bool:
        return effect in self.effects

    def asks(self) -> str:
        """What the phase asks and does, as its notices and reminders record it when
        queued (``rollout.phases.drift``): one line, the same on SQLite and PostgreSQL,
        that :func:`asks_more_than` reads back."""
        r = self.requires
        parts = [f"two_factor={r.two_factor}"]
        parts += [rule for rule in _TOKEN_FLAGS if getattr(r, rule)]
        if r.token_max_age_days is not None:
            parts.append(f"token_max_age_days={r.token_max_age_days}")
        if r.token_max_lifetime_days is not None:
            parts.append(f"token_max_lifetime_days={r.token_max_lifetime_days}")
        if r.write_token_max_lifetime_days is not None:
            parts.append(f"write_token_max_lifetime_days={r.write_token_max_lifetime_days}")
        parts.append("effects=" + ",".join(sorted(self.effects)))
        return ";".join(parts)

    @property
    def enforce_until(self) -> date:
        """The last day enforcement runs: ``enforce_on``, or with per-account deadlines
        the latest one possible (the last notice's, snoozed)."""
        d = self.deadline
        if d is None:
            return self.enforce_on
        return d.last_notice_on + timedelta(days=d.days_after_notice + d.snooze_days)

    @property
    def notices_until(self) -> date:
        """The day notices stop being queued (exclusive)."""
        d = self.deadline
        return self.enforce_on if d is None else d.last_notice_on + timedelta(days=1)


class ExemptAccount(_Strict):
    username: Username
    reason: str = Field(min_length=1)


class Exemptions(_Strict):
    accounts: list[ExemptAccount] = Field(default_factory=list)


class Notifications(_Strict):
    """Who the emails come from, where they point, and how often they may repeat."""

    from_address: Annotated[
        str, Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"), AfterValidator(_one_line)
    ] = "security@registry.example"
    from_name: OneLine = "Registry security"
    help_url: Url = "https://docs.registry.example/2fa"
    tokens_url: Url = "https://docs.registry.example/automation-tokens"
    # Where an account postpones its own deadline, in phases that allow a snooze.
    snooze_url: Url = "https://docs.registry.example/2fa#postpone"
    # The reports folder as published: a phase's summary links to the report of the day
    # its enforcement ran, ``<report_url>/<YYYY-MM-DD>/adoption.html``.
    report_url: Url = "https://rollout.registry.example/reports"
    # Where an account accepts an org's invitation back (the registry website's page of
    # its pending invitations): the email links to it with ``?org=<the org>``.
    invitations_url: Url = "https://registry.example/settings/invitations"
    # Usernames of the registry staff who get each phase's summary.
    release_managers: list[Username] = Field(default_factory=list)
    # The least number of days between two emails of one kind to one account.
    repeat_days: dict[RepeatableEmail, Annotated[int, Field(strict=True, ge=1, le=366)]] = Field(
        default_factory=lambda: {"reminder": 7, "brownout_heads_up": 4}
    )


class Plan(_Strict):
    name: Name
    description: str = ""
    metrics: MetricsWindows = MetricsWindows()
    cohorts: dict[Name, CohortRule]
    # Optional: a campaign without enhanced login verification (PyPI's, GitHub's, token
    # campaigns) has no ELV trial, heads-up or enrol-all steps.
    elv: Elv | None = None
    brownouts: list[Brownout] = Field(default_factory=list)
    phases: list[Phase]
    exemptions: Exemptions = Exemptions()
    notifications: Notifications = Notifications()

    def phase(self, name: str) -> Phase:
        for phase in self.phases:
            if phase.name == name:
                return phase
        known = ", ".join(p.name for p in self.phases)
        raise BadInput(None, None, f"no phase {quoted(name)} in plan {self.name} (phases: {known})")

    def cohort(self, name: str) -> CohortRule:
        if name not in self.cohorts:
            known = ", ".join(self.cohorts)
            raise BadInput(
                None, None, f"no cohort {quoted(name)} in plan {self.name} (cohorts: {known})"
            )
        return self.cohorts[name]

    def cohort_fixed_from(self, name: str) -> tuple[date, str] | None:
        """The first day a cohort has packages, and the phase that fixes it then: the
        earliest ``cohort_as_of`` of the phases on it (its rule judged on that day's
        metrics first; a package that qualifies then or later stays). None for a
        cohort no phase names: built whenever asked."""
        fixing = [(p.cohort_as_of, p.name) for p in self.phases if p.cohort == name]
        return min(fixing) if fixing else None

    @property
    def exempt_usernames(self) -> frozenset[str]:
        return frozenset(a.username for a in self.exemptions.accounts)

    def security_key_phases(self) -> dict[str, tuple[str, ...]]:
        """Per cohort, the phases that require a security key of it (``two_factor:
        phishing_resistant``), in the plan's order: the one rule for "compliant" of every
        reader (the report's ``key_phases``, the notebooks, a cohort build's counts). Such
        a cohort is compliant with a security key, TOTP alone falling short; a cohort no
        such phase names, with any 2FA (another phase naming it does not lower it)."""
        out: dict[str, tuple[str, ...]] = {}
        for phase in self.phases:
            if phase.requires.two_factor == "phishing_resistant":
                out[phase.cohort] = (*out.get(phase.cohort, ()), phase.name)
        return out


Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class PlanProblem:
    path: Path_
    message: str


# What ELV's own steps and heads-up emails go by (rollout.core.calendar.ELV): a brown-out of
# that name would share their step key ("heads-up elv"), and `plan show` mix their runs.
ELV_STEPS = "elv"


def plan_problems(plan: Plan) -> list[PlanProblem]:
    """What is wrong with a plan that parsed: order of dates, references, overlaps."""
    problems: list[PlanProblem] = []
    windows = plan.metrics
    if windows.weekly_window_days > windows.monthly_window_days:
        # The weekly sums are taken inside the monthly window (and only its gaps are
        # known): a longer weekly window silently counted the monthly one's days alone.
        problems.append(
            PlanProblem(
                ("metrics", "weekly_window_days"),
                f"the weekly window ({counted(windows.weekly_window_days, 'day')}) is longer "
                f"than the monthly one ({counted(windows.monthly_window_days, 'day')})",
            )
        )
    elv = plan.elv
    if elv is not None and elv.trial is not None and elv.trial.ends <= elv.trial.starts:
        problems.append(
            PlanProblem(("elv", "trial", "ends"), "the ELV trial ends before it starts")
        )
    if elv is not None and elv.trial is not None and elv.enroll_all_on < elv.trial.ends:
        problems.append(
            PlanProblem(
                ("elv", "enroll_all_on"), "everyone is enrolled in ELV before the trial ends"
            )
        )
    seen: dict[str, int] = {}
    ordered = sorted(enumerate(plan.brownouts), key=lambda item: item[1].starts_at)
    for index, brownout in enumerate(plan.brownouts):
        if brownout.name in seen:
            problems.append(
                PlanProblem(
                    ("brownouts", index, "name"), f"brown-out name {brownout.name!r} is used twice"
                )
            )
        seen[brownout.name] = index
        if brownout.name == ELV_STEPS:
            problems.append(
                PlanProblem(
                    ("brownouts", index, "name"),
                    f"brown-out name {ELV_STEPS!r} is taken by ELV's own steps and emails",
                )
            )
        if elv is not None and brownout.starts_at >= datetime.combine(elv.enroll_all_on, time.min):
            # ELV for all enrols every account for good that day: a window from then on
            # changes no login, and its heads-up (to every account without 2FA) would
            # announce "a rehearsal for when this becomes permanent" of what already is.
            problems.append(
                PlanProblem(
                    ("brownouts", index, "starts_at"),
                    f"brown-out {brownout.name} starts on or after elv.enroll_all_on "
                    f"({elv.enroll_all_on}), when every account is enrolled in ELV for good: "
                    "it would rehearse nothing, and its heads-up would announce a rehearsal "
                    "of what already applies",
                )
            )
    for (_, earlier), (index, later) in pairwise(ordered):
        if later.starts_at < earlier.ends_at:
            problems.append(
                PlanProblem(
                    ("brownouts", index, "starts_at"),
                    f"brown-out {later.name} overlaps {earlier.name} "
                    f"({earlier.starts_at:%Y-%m-%d %H:%M} UTC + {earlier.hours} h)",
                )
            )
    phase_names: set[str] = set()
    for index, phase in enumerate(plan.phases):
        where: Path_ = ("phases", index)
        if phase.name in phase_names:
            problems.append(
                PlanProblem((*where, "name"), f"phase name {phase.name!r} is used twice")
            )
        phase_names.add(phase.name)
        if phase.cohort not in plan.cohorts:
            known = ", ".join(plan.cohorts) or "none"
            problems.append(
                PlanProblem(
                    (*where, "cohort"), f"unknown cohort {phase.cohort!r} (cohorts: {known})"
                )
            )
        if phase.notice_on < phase.cohort_as_of:
            problems.append(
                PlanProblem(
                    (*where, "notice_on"),
                    "notices go out before the cohort is fixed (cohort_as_of)",
                )
            )
        if phase.enforce_on <= phase.notice_on:
            problems.append(
                PlanProblem(
                    (*where, "enforce_on"), "enforcement is not after the notice (notice_on)"
                )
            )
        if phase.deadline is not None:
            problems += [
                PlanProblem((*where, *path), message) for path, message in _deadline_problems(phase)
            ]
        for position, days in enumerate(phase.reminders_days_before):
            if days in phase.reminders_days_before[:position]:
                # Two reminders the same day would be one step, one mailing.
                problems.append(
                    PlanProblem(
                        (*where, "reminders_days_before", position),
                        f"a reminder {counted(days, 'day')} before enforcement is listed twice",
                    )
                )
            # Compared in days, not as a date: 10**9 days before enforcement has no date.
            if not 1 <= days < (phase.enforce_on - phase.notice_on).days:
                problems.append(
                    PlanProblem(
                        (*where, "reminders_days_before", position),
                        f"a reminder {counted(days, 'day')} before enforcement"
                        f"{_day_before(phase, days)} "
                        f"is not between the notice and enforcement",
                    )
                )
        problems += [
            PlanProblem((*where, *path), message) for path, message in _effect_problems(phase)
        ]
    usernames: set[str] = set()
    for index, exempt in enumerate(plan.exemptions.accounts):
        if exempt.username in usernames:
            problems.append(
                PlanProblem(
                    ("exemptions", "accounts", index, "username"),
                    f"{quoted(exempt.username)} is exempted twice",
                )
            )
        usernames.add(exempt.username)
    return problems


def plan_warnings(plan: Plan) -> list[str]:
    """What a valid plan may well not mean: a cohort no phase names (built and reported,
    yet nobody in it is warned or enforced), a phase's token rule that another of its
    rules already holds to more (:func:`_rules_doing_nothing`: the notices would tell
    of both), and two phases on one cohort with the same notice and enforcement days
    (each of its maintainers gets two notices the same day, and is enforced twice the
    same day)."""
    warnings = [
        f"cohort {name} is named by no phase: it is built and reported, but nobody in it "
        "is warned or enforced"
        for name in plan.cohorts
        if all(phase.cohort != name for phase in plan.phases)
    ]
    for phase in plan.phases:
        warnings += [f"phase {phase.name}: {said}" for said in _rules_doing_nothing(phase)]
    for earlier, later in combinations(plan.phases, 2):
        if (earlier.cohort, earlier.notice_on, earlier.enforce_on) == (
            later.cohort,
            later.notice_on,
            later.enforce_on,
        ):
            warnings.append(
                f"phases {earlier.name} and {later.name} warn and enforce cohort "
                f"{later.cohort} on the same days ({later.notice_on}, {later.enforce_on}): "
                "its maintainers get two notices and two enforcements (one phase can have "
                "both phases' effects)"
            )
    return warnings


def _rules_doing_nothing(phase: Phase) -> list[str]:
    """A phase's token rules that another of its rules already holds to more, so they
    forbid no token the other does not while the notices tell of both: a cap on
    publishing tokens no shorter than the cap on every token (a publishing token is a
    token), and an age cap no shorter than the cap on every token's lifetime (a live
    token older than N days has lasted more than N days already, so it breaks a
    lifetime cap of N days or less). An age cap no shorter than the cap on publishing
    tokens alone still forbids old read-only tokens, and draws nothing."""
    requires = phase.requires
    every = requires.token_max_lifetime_days
    if every is None:
        return []
    covered = [
        (field, days, kind)
        for field, days, kind in (
            (
                "write_token_max_lifetime_days",
                requires.write_token_max_lifetime_days,
                "caps every token, publishing ones too",
            ),
            (
                "token_max_age_days",
                requires.token_max_age_days,
                "holds every live token older than that to less",
            ),
        )
        if days is not None and days >= every
    ]
    return [
        f"{field} ({counted(days, 'day')}) does nothing: token_max_lifetime_days "
        f"({counted(every, 'day')}) already {kind}, and the notices would tell of both "
        "(drop it, or make it the shorter)"
        for field, days, kind in covered
    ]


def _day_before(phase: Phase, days: int) -> str:
    """The day of a reminder ``days`` before enforcement, as " (YYYY-MM-DD)", for a
    message; "" when there is no such day (before year 1 or after 9999)."""
    try:
        return f" ({phase.enforce_on - timedelta(days=days)})"
    except OverflowError:
        return ""


def _deadline_problems(phase: Phase) -> list[tuple[Path_, str]]:
    """A per-account deadline's dates: the first deadline is enforce_on, so reminders
    (days before each account's own deadline) stay checked against it."""
    deadline = phase.deadline
    assert deadline is not None
    problems: list[tuple[Path_, str]] = []
    first = phase.notice_on + timedelta(days=deadline.days_after_notice)
    if phase.enforce_on != first:
        problems.append(
            (
                ("enforce_on",),
                f"with per-account deadlines enforcement starts on the first deadline, "
                f"notice_on + {counted(deadline.days_after_notice, 'day')} = {first}",
            )
        )
    if deadline.last_notice_on < phase.notice_on:
        problems.append(
            (("deadline", "last_notice_on"), "the last notice is before the first (notice_on)")
        )
    if not phase.notify_compliant:
        # A notice skipped as compliant starts no clock: an account that meets the phase
        # until last_notice_on and falls short after it would have no deadline, and an
        # account with none is never enforced.
        problems.append(
            (
                ("notify_compliant",),
                "with per-account deadlines the notice starts each account's clock and "
                "must go to accounts that meet the phase too (notify_compliant: true): "
                "one that falls short after last_notice_on would have no deadline and "
                "never be enforced",
            )
        )
    return problems


def _effect_problems(phase: Phase) -> list[tuple[Path_, str]]:
    """Effects that the phase's requirements leave nothing to act on, or that act on
    what it does not ask for."""
    problems: list[tuple[Path_, str]] = []
    requires = phase.requires
    if not phase.effects:
        problems.append((("effects",), "a phase needs at least one effect"))
    for position, effect in enumerate(phase.effects):
        if effect in phase.effects[:position]:
            problems.append((("effects", position), f"effect {effect} is listed twice"))
        if effect in TWO_FACTOR_EFFECTS and requires.two_factor == "none":
            problems.append(
                (("effects", position), f"{effect} needs a two_factor requirement (not none)")
            )
        if effect == "close_totp_enrolment" and requires.two_factor != "phishing_resistant":
            problems.append(
                (
                    ("effects", position),
                    "close_totp_enrolment needs two_factor: phishing_resistant",
                )
            )
        if effect == "revoke_tokens" and not requires.token_rules:
            problems.append((("effects", position), "revoke_tokens needs a token rule in requires"))
    if requires.token_rules and not (phase.does("revoke_tokens") or phase.does("warn")):
        # An account held back only by its tokens would be enforced with nothing done.
        problems.append((("requires",), "token rules need the revoke_tokens or warn effect"))
    if requires.two_factor != "none" and not any(
        phase.does(effect) for effect in (*TWO_FACTOR_EFFECTS, "warn")
    ):
        # An account held back only by its missing factor would be told it is required,
        # and enforced, with nothing done (PyPI's token phase asks for tokens alone).
        problems.append(
            (
                ("requires", "two_factor"),
                f"a {requires.two_factor} second factor needs an effect that acts on it "
                f"({', '.join((*TWO_FACTOR_EFFECTS, 'warn'))}), or two_factor: none",
            )
        )
    if phase.does("revoke_tokens") and phase.max_tokens is None:
        problems.append(
            (("max_tokens",), "a phase that revokes tokens needs max_tokens (its blast radius)")
        )
    if phase.max_tokens is not None and not phase.does("revoke_tokens"):
        # Its author expects tokens revoked, and enforcement would revoke none.
        problems.append((("max_tokens",), "max_tokens is set but the effects do not revoke_tokens"))
    return problems


# --- YAML with line numbers -------------------------------------------------------


class _PlanYamlError(yaml.constructor.ConstructorError):
    """YAML that parses but cannot be a plan as written (its reason needs no prefix)."""


# How deep a plan's YAML may nest: a real plan is 6 levels deep at most. PyYAML builds
# a nested node by recursion, so thousands of levels ended in a RecursionError.
MAX_NESTING = 50


class _PlanLoader(yaml.SafeLoader):
    """PyYAML's safe loader, minus what it lets through: a repeated key (it keeps the
    last one, silently), an impossible date (it raises a bare ValueError), nesting
    deep enough to exhaust Python's stack (a RecursionError) and explicit tags."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        tag = getattr(event, "tag", None)
        if tag not in (None, "!", "tag:yaml.org,2002:str"):
            # `!!int 0x10` went past the decimal-only numbers to a bare ValueError,
            # `!!binary` made a name of bytes; a plan needs none of them (a quoted value,
            # or `!!str`, is text).
            shown = tag.replace("tag:yaml.org,2002:", "!!")
            raise _PlanYamlError(
                None,
                None,
                f"the YAML tag {shown} is not part of a plan (write the value plainly)",
                event.start_mark,
            )
        if self._depth >= MAX_NESTING:
            raise _PlanYamlError(
                None,
                None,
                f"nested more than {MAX_NESTING} levels deep (a plan needs a few)",
                self.peek_event().start_mark,
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` may be overridden by the keys beside it
            key = self.construct_object(key_node, deep=deep)
            try:
                earlier = first_line.get(key)
            except TypeError:
                continue  # an unhashable key: PyYAML's own check refuses it
            line = key_node.start_mark.line + 1
            if earlier is not None:
                raise _PlanYamlError(
                    None,
                    None,
                    f"{quoted(key)} appears twice in one mapping (first on line {earlier})",
                    key_node.start_mark,
                )
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> date | datetime:
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError as error:
            raise _PlanYamlError(
                None,
                None,
                f"{quoted(node.value)} is not a real date or time: {error}",
                node.start_mark,
            ) from error


_PlanLoader.add_constructor("tag:yaml.org,2002:timestamp", _PlanLoader.construct_yaml_timestamp)

# Numbers as a person reads them. YAML 1.1, which PyYAML follows, reads `hours: 1:30`
# as base 60 (90 hours), `010` as octal (8), and 0x/0b forms: a plan says 1:30 or 010
# meaning something else. Here a number is decimal (with `_` between digits, as in
# 165_000_000); anything else stays text, which the plan's checks then refuse by line.
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_PlanLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_PlanLoader.add_implicit_resolver(
    _INT, re.compile(r"^[-+]?[0-9](?:_?[0-9])*$"), list("-+0123456789")
)
_PlanLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:[0-9](?:_?[0-9])*\.(?:[0-9](?:_?[0-9])*)?|\.[0-9](?:_?[0-9])*)"
        r"(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?[0-9](?:_?[0-9])*[eE][-+]?[0-9]+"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)
# The most digits a plan's number may have: no count or threshold of a plan comes near
# (the largest bound is a download count), and Python's int() refuses past 4,300 digits
# with a bare ValueError, which ended the command in a traceback.
MAX_NUMBER_DIGITS = 100


def _construct_int(loader: _PlanLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node).replace("_", "")
    digits = len(text.lstrip("+-"))
    if digits > MAX_NUMBER_DIGITS:
        raise _PlanYamlError(
            None,
            None,
            f"a number of {digits:,} digits is larger than any value of a plan (at most "
            f"{MAX_NUMBER_DIGITS} digits)",
            node.start_mark,
        )
    return int(text)


_PlanLoader.add_constructor(_INT, _construct_int)


def _line_of(node: yaml.Node | None, path: Path_) -> int | None:
    """The line of the YAML key at ``path`` (or of its nearest existing parent)."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in path:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == key), None)
            if pair is None:
                return line
            line = pair[0].start_mark.line + 1
            node = pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _describe(loc: Path_) -> str:
    # pydantic marks a problem with a mapping's key with a last "[key]": the key says it.
    return ".".join(str(part) for part in loc if part != "[key]") or "plan"


def parse_plan(text: str, path: Path | str = "<plan>") -> tuple[Plan | None, list[BadInput]]:
    """A plan and every problem with it, each a BadInput naming the line."""
    try:
        node = yaml.compose(text, Loader=_PlanLoader)
        data: Any = yaml.load(text, Loader=_PlanLoader)  # a SafeLoader: no arbitrary objects
    except yaml.reader.ReaderError as error:
        # A character YAML does not allow (a NUL, another control): the reader knows
        # where, as a position in the text, not as a mark.
        line = text[: error.position].count("\n") + 1
        character = error.character
        if isinstance(character, int):  # (a code point, when the text was a str)
            character = chr(character)
        reason = f"not valid YAML: character {quoted(character)} is not allowed in a plan"
        return None, [BadInput(path, line, reason)]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(error, "problem", error)
        reason = problem if isinstance(error, _PlanYamlError) else f"not valid YAML: {problem}"
        return None, [BadInput(path, line, reason)]
    if not isinstance(data, dict):
        return None, [BadInput(path, 1, "a plan is a YAML mapping (name, cohorts, phases, ...)")]
    try:
        plan = Plan.model_validate(data)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            loc = tuple(
                p for p in item["loc"] if not isinstance(p, str) or not p.startswith("function-")
            )
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] == "missing":
                message = "required field is missing"
            elif item["type"] == "extra_forbidden":
                message = "unknown field (a typo?)"
            problems.append(BadInput(path, _line_of(node, loc), f"{_describe(loc)}: {message}"))
        return None, problems
    return plan, [
        BadInput(path, _line_of(node, p.path), f"{_describe(p.path)}: {p.message}")
        for p in plan_problems(plan)
    ]


# The most a plan file may hold: the reference plan is 4 KB; this leaves room for tens of
# thousands of exemptions, and refuses a log or a database named by mistake at once.
MAX_PLAN_BYTES = 4 * MIB


def read_plan_text(path: Path) -> str:
    """The plan file's text, or BadInput saying why it cannot be read."""
    try:
        data = read_whole(path, "plan", MAX_PLAN_BYTES)
    except OSError as error:
        reason = f"cannot read the plan: {error.strerror}"
        if not path.is_absolute():
            # ROLLOUT_PLAN=plans/... from a job that did not cd into the checkout (cron
            # starts in the home folder): say where the relative path was looked for.
            reason += f" (a relative path, read from the working folder {Path.cwd()})"
        raise BadInput(path, None, reason) from error
    return utf8_text(path, data)


def load_plan(path: Path | str) -> Plan:
    path = Path(path)
    plan, problems = parse_plan(read_plan_text(path), path)
    if problems:
        first = problems[0]
        if len(problems) > 1:
            more = "; ".join(f"line {p.line}: {p.reason}" for p in problems[1:4])
            raise BadInput(path, first.line, f"{first.reason} (also {more})")
        raise first
    assert plan is not None
    return plan
