"""Every email the rollout sends: a name, a function returning its context, templates.

Like PyPI warehouse's ``@_email``: each email is declared once with :func:`email`,
its templates live in ``templates/<name>.{subject.txt,txt,html}``, and its context
function turns the recipient plus what was stored when the email was queued into
what the templates need. Context is built at send time, so the wording follows the
recipient's 2FA status then, not when it was queued: an account that enrolled in the
meantime gets a thank-you (``when_compliant="adapt"``) or nothing (``"skip"``), never
a warning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal

from rollout.core.links import invitation_link, report_link
from rollout.core.plan import DEFAULT_EFFECTS, Phase, Plan, Requirements
from rollout.core.words import counted
from rollout.notify.outbox import RUN_DAY, SENT_ON, run_day

ContextFunction = Callable[["Recipient", Mapping[str, Any], Plan], dict[str, Any]]
# The email enforcement queues to each account a phase changed.
ENFORCEMENT_EMAIL = "enforcement_notice"
# The occasion prefix of the enforcement email a rerun of a phase queues (``run:<id>``)
# to the owners of tokens it revoked that an earlier run had told already.
RERUN_OCCASION = "run:"
# The email ahead of a brown-out (its occasion: the brown-out's name).
HEADS_UP_EMAIL = "brownout_heads_up"
# The email ahead of ELV for all (its context: the day it tells, ``enrolled_on``).
ELV_HEADS_UP_EMAIL = "elv_enrollment"
# The emails ahead of a login change for accounts without 2FA (a brown-out's emailed
# codes, ELV for all): none goes to an account the registry requires 2FA of already
# (signed out, told to set it up at its next login): "nothing breaks: you will just be
# asked for the code at login" is false for it, and no code lets it in.
LOGIN_HEADS_UPS = (HEADS_UP_EMAIL, ELV_HEADS_UP_EMAIL)
# An org's invitation back (its context: the instant it expires, ``expires_at``).
INVITATION_EMAIL = "org_invitation"
# What a phase summary stores: the UTC day its enforcement ran (its report's day).
ENFORCED_ON = "enforced_on"
# Effects that stop no one signing in or publishing (a banner, new TOTP set-ups
# closed): a phase of only these recommends.
RECOMMENDING_EFFECTS = frozenset({"warn", "close_totp_enrolment"})


@dataclass(frozen=True)
class Stricter:
    """A phase requiring 2FA of an account that another phase only recommends it to
    (Recipient.stricter), or requires of it later (Recipient.sooner)."""

    cohort: str | None  # its cohort's description; None when it is the same cohort
    on: date  # from when: its enforcement day, or the account's own deadline in it
    asks: str  # the factor it asks, a noun phrase (Requirements.factor_in_words)
    # ``on`` is the account's own deadline in that phase (per-account deadlines): for
    # Recipient.sooner, said so (it is the day that phase's own emails gave it).
    own: bool = False


@dataclass(frozen=True)
class Recipient:
    """The account an email goes to, as it is at send time."""

    account_id: int
    username: str
    address: str
    verified: bool
    method: str | None  # "webauthn", "totp" or None: the strongest active 2FA factor
    packages: tuple[str, ...] = ()  # what put it in the email's cohort, if any
    # For the email of a phase that asks more than any 2FA (a security key, no tokens of
    # some kinds): whether the account lacks the factor the phase asks for, and its live
    # tokens the phase forbids. None: judged by ``method`` alone, as npm 2022's phases.
    lacks_factor: bool | None = None
    tokens: tuple[TokenLine, ...] = ()
    # Its own deadline in a phase with per-account deadlines (for a notice: the one the
    # notice starts), and whether it was postponed on request (once is the most).
    deadline: date | None = None
    snoozed: bool = False
    # The registry requires a second factor of the account (accounts.tfa_required_at,
    # set by any phase's enforcement): a token-only phase's email to one without any
    # factor says so rather than "nothing for you to do".
    tfa_required: bool = False
    # For an enforcement email: another phase had required 2FA of it (and signed it out)
    # before this phase did, so this one changed neither.
    required_earlier: bool = False
    # For the email of a phase that only recommends (a banner): a later phase of the
    # plan that requires 2FA of the account and told it so. "Recommends" alone read as
    # if 2FA were optional for it (RubyGems 2022: warn above 165M downloads, require
    # above 180M, a day apart).
    stricter: Stricter | None = None
    # For a notice or reminder of a phase that requires 2FA: another phase of the plan
    # requires 2FA of the account sooner (enforced on a day still to come, before this
    # one's deadline: its enforce_on, or the account's own deadline there), its cohort
    # holding the account, which lacks its factor. The email's own date alone told its
    # owner there was time until then (a hand-written plan whose later phase is
    # announced before an earlier one is enforced).
    sooner: Stricter | None = None
    # For an enforcement email: the phase was rolled back since it acted (before this
    # email went); what it revoked stays revoked, and the email says so.
    rolled_back: bool = False
    # For the enforcement email of a rerun of the phase (occasion ``run:<id>``) to an
    # account its first enforcement email reached: the day the last of the phase's
    # enforcement emails that reached it went. This one tells what was revoked since:
    # ``tokens`` are those the rerun revoked, and those of earlier reruns whose own
    # email never went.
    told_on: date | None = None

    @property
    def owes_2fa(self) -> bool:
        """The registry requires 2FA of it already and it has none: told so, neither
        that it "will be" required nor that there is "nothing for you to do"."""
        return self.method is None and self.tfa_required

    @property
    def compliant(self) -> bool:
        if self.lacks_factor is not None:
            return not self.lacks_factor and not self.tokens
        return self.method is not None


@dataclass(frozen=True)
class TokenLine:
    """A token that will stop working, as an email lists it."""

    name: str | None
    kind: str
    created_at: datetime
    last_used_at: datetime | None
    # In a warning: an earlier phase of the plan revokes the token first, from this day
    # (its enforcement day, or the account's own deadline in it), by these requirements
    # (the token rules of it the token breaks, in words: "no classic tokens and no
    # unnamed tokens"); the warning's own date would tell its owner there was time
    # until then.
    stops_on: date | None = None
    stops_because: str = ""
    # ``stops_on`` is the account's own deadline in that phase (per-account deadlines):
    # said so, as Stricter.own (it is the day that phase's own emails gave it).
    stops_own: bool = False
    # The token publishes (tokens.writes): under a rule on publishing tokens without 2FA,
    # enrolling spares it, so the email says to enrol; it spares no other token.
    writes: bool = True
    # When it expires (None: never), said when the phase caps how long a token lasts
    # (token_max_lifetime_days, write_token_max_lifetime_days): why such a token stops
    # working.
    expires_at: datetime | None = None


@dataclass(frozen=True)
class Email:
    name: str
    summary: str
    context: ContextFunction
    # What a recipient who already uses 2FA gets: the adapted wording, or nothing.
    when_compliant: Literal["adapt", "skip"]
    # Read the recipient's packages in the phase's cohort (phase emails only).
    needs_packages: bool = False


EMAILS: dict[str, Email] = {}


def email(
    name: str, summary: str, *, when_compliant: Literal["adapt", "skip"], needs_packages=False
) -> Callable[[ContextFunction], ContextFunction]:
    def register(function: ContextFunction) -> ContextFunction:
        if name in EMAILS:
            raise ValueError(f"email {name!r} is declared twice")
        EMAILS[name] = Email(name, summary, function, when_compliant, needs_packages)
        return function

    return register


def common(recipient: Recipient, plan: Plan) -> dict[str, Any]:
    """What every template may use."""
    n = plan.notifications
    return {
        "username": recipient.username,
        "compliant": recipient.compliant,
        "method": {"webauthn": "a security key", "totp": "an authenticator app"}.get(
            recipient.method or "", ""
        ),
        "help_url": n.help_url,
        "tokens_url": n.tokens_url,
        "sender_name": n.from_name,
    }


def recommends_only(phase: Phase) -> bool:
    """Nothing the phase does stops an account signing in or publishing (a banner, new
    TOTP set-ups closed): its emails recommend."""
    return set(phase.effects) <= RECOMMENDING_EFFECTS


# A run summary's count of the accounts an enforcement applied to (EnforceResult), and
# the name it is shown by for a phase that requires no 2FA (a banner and new TOTP
# set-ups closed, tokens revoked): "required" was false of them, as the phase's preview
# says "acted on" (rollout.phases.previews.acted_word). Stored runs keep the key, older
# ones too; only what is shown changes.
ACCOUNTS_REQUIRED = "accounts_required"
ACCOUNTS_ACTED_ON = "accounts_acted_on"


def counts_as_told(phase: Phase | None, counts: Mapping[str, Any]) -> dict[str, Any]:
    """A run summary's counts as ``plan show`` and the release managers' summary show
    them, in their order: ``accounts_required`` as ``accounts_acted_on`` of a phase that
    does not require 2FA (``require_2fa`` not among its effects); the rest as stored. A
    phase the plan no longer has (None) keeps the stored names."""
    if phase is None or phase.does("require_2fa"):
        return dict(counts)
    return {(ACCOUNTS_ACTED_ON if k == ACCOUNTS_REQUIRED else k): v for k, v in counts.items()}


# The email that tells an account of a phase; to one already meeting the phase, only
# when the plan asks (Phase.notify_compliant).
NOTICE_EMAIL = "phase_notice"


def skips_compliant(email: str, phase: Phase | None) -> bool:
    """An account that meets the phase gets no such email: a reminder (nothing to
    remind of), or a phase's notice unless the plan asks (``notify_compliant``): a
    "you already meet it" to every account of a banner phase, or of a token phase to
    every account holding no such token, is mail with nothing to do."""
    if EMAILS[email].when_compliant == "skip":
        return True
    return email == NOTICE_EMAIL and phase is not None and not phase.notify_compliant


def asks_only_2fa(phase: Phase) -> bool:
    """The phase asks any second factor by one date and does npm 2022's effects: its
    emails keep their 2FA wording; every other phase's say what it asks and does, and
    by when for this account."""
    return (
        phase.requires == Requirements()
        and tuple(phase.effects) == DEFAULT_EFFECTS
        and phase.deadline is None
    )


# What each effect does to an account it acts on, as the emails say it (a noun phrase
# that reads after "on that day:" and after "what changed:").
EFFECT_WORDS = {
    "require_2fa": "two-factor authentication (2FA) required to sign in and publish",
    "revoke_sessions": "signed out of the website",
    "revoke_tokens": "the tokens listed below revoked, which cannot be undone",
    "warn": "a banner on the website asking you to act",
    "close_totp_enrolment": "no new authenticator-app (TOTP) set-ups: security keys only",
}
# The effects that act only on an account lacking the factor the phase asks for.
_FACTOR_EFFECTS = ("require_2fa", "revoke_sessions", "close_totp_enrolment")


def _phase(
    plan: Plan, stored: Mapping[str, Any], r: Recipient | None = None, *, enforced: bool = False
) -> dict[str, Any]:
    phase = plan.phase(stored["phase"])
    cohort = plan.cohort(phase.cohort)
    found = {
        "phase": phase.name,
        "cohort": phase.cohort,
        "cohort_description": cohort.in_words(),
        "cohort_by_packages": cohort.by_packages,
        # Its accounts are narrowed (active_within, orgs): not every maintainer of the
        # packages is asked, so npm 2022's "maintainers of these packages must use 2FA"
        # would be false; the classic emails name the cohort instead.
        "cohort_narrowed": cohort.narrowed,
        "deadline": phase.enforce_on,
        "classic": asks_only_2fa(phase),
    }
    # Already required (by an earlier phase), without any factor: "will be required, you
    # will be signed out" would be false (npm 2022's high-impact notices went to such
    # top-100 accounts), and so would a token-only phase's "nothing for you to do".
    found["already_required"] = r is not None and r.owes_2fa
    found["required_earlier"] = r is not None and r.required_earlier
    found["sooner"] = r.sooner if r is not None else None
    found["factor_required_already"] = False
    if found["classic"] or r is None:
        return found
    lacks = r.lacks_factor if r.lacks_factor is not None else r.method is None
    applies = {
        effect
        for effect in phase.effects
        if (effect in _FACTOR_EFFECTS and lacks)
        or (effect == "revoke_tokens" and r.tokens)
        or effect == "warn"
    }
    # Another phase's enforcement required 2FA of the account already (its flag), and it
    # has none: this phase's "2FA required to sign in and publish" is no change, and "if
    # it still does not on that day" told it there was time until then (a plan whose
    # thresholds fall: req-1m enforced, then req-100k's notice). A warning judges the
    # flag as it is; an enforcement email, whether it came before this phase's
    # (``required_earlier``), since this phase sets it too.
    required_already = (
        phase.requires.two_factor == "any"
        and "require_2fa" in phase.effects
        and lacks
        and (r.required_earlier if enforced else r.owes_2fa)
    )
    if required_already:
        applies.discard("require_2fa")
    if r.told_on is not None:
        # A rerun's own email: the rest was told by ``told_on``; reruns revoked tokens.
        applies &= {"revoke_tokens"}
    words = dict(EFFECT_WORDS)
    if phase.requires.two_factor == "phishing_resistant":
        words["require_2fa"] = "a security key (WebAuthn) required to sign in and publish"
    own = phase.deadline
    if own is not None:
        found.update(
            deadline=r.deadline or phase.enforce_on,
            days_after_notice=own.days_after_notice,
            snooze_days=own.snooze_days,
            snooze_url=plan.notifications.snooze_url,
            snoozed=r.snoozed,
        )
    return {
        **found,
        "own_deadline": own is not None,
        "requirements": phase.requires.describe(),
        # Nothing the phase does stops an account signing in or publishing (a banner,
        # new TOTP set-ups closed): it recommends; saying "requires" and "action
        # needed" told two million TOTP users something false (npm, 2025-10-13).
        "recommends_only": recommends_only(phase),
        "stricter": r.stricter,
        "rolled_back": r.rolled_back,
        "told_on": r.told_on,
        "security_key": phase.requires.two_factor == "phishing_resistant",
        # Enrolling is also the way out of PyPI's rule, even where the phase asks no
        # factor: its tokens offend only while the account has none. Only for an account
        # with no factor, and a listed token that publishes: one with TOTP was told to
        # "enable two-factor authentication" for its classic or old tokens, which no
        # factor spares.
        "lacks_factor": (lacks and phase.requires.two_factor != "none")
        or (
            phase.requires.no_write_tokens_without_2fa
            and r.method is None
            and any(t.writes for t in r.tokens)
        ),
        "tokens": list(r.tokens),
        "token_replacement": token_replacement(phase.requires),
        "lifetime_capped": (
            phase.requires.token_max_lifetime_days is not None
            or phase.requires.write_token_max_lifetime_days is not None
        ),
        "your_effects": [words[e] for e in phase.effects if e in applies],
        "factor_required_already": required_already and r.told_on is None,
    }


def token_replacement(requires: Requirements) -> str:
    """What to publish with instead of the tokens a phase forbids, in a few words that
    fit after "publish from CI with": never a kind of token the phase forbids (a
    granular token may bypass 2FA too, or last longer than the phase allows)."""
    # The replacement publishes: the cap on publishing tokens is the one it must meet.
    cap = requires.write_token_cap
    lasting = "" if cap is None else f" that expires within {counted(cap, 'day')} of its creation"
    if requires.no_bypass_2fa_tokens:
        also = " and" if lasting else ""
        return f"trusted publishing or a granular token{lasting}{also} that does not bypass 2FA"
    if lasting:
        return f"trusted publishing or a granular token{lasting}"
    return "a granular token or trusted publishing"


def _day(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value)[:10])


def _time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


@email(
    "phase_notice",
    "2FA will be required of this account: why, by when, how",
    when_compliant="adapt",
    needs_packages=True,
)
def phase_notice(r: Recipient, stored: Mapping[str, Any], plan: Plan) -> dict[str, Any]:
    phase = _phase(plan, stored, r)
    # A notice of one date for all, queued ``--late`` and sent on or after that day (the
    # drain's SENT_ON, else its queue run's day): "from", "on that day, if it still does
    # not" and "action needed by" a day gone. Its words are the late reminder's:
    # "since", "once the registry enforces it". (A notice under per-account deadlines
    # starts its own deadline, always ahead.)
    sent_on = stored.get(SENT_ON) or stored.get(RUN_DAY)
    return {
        **common(r, plan),
        **phase,
        "packages": list(r.packages),
        "stage": "notice",
        "passed": sent_on is not None and phase["deadline"] <= _day(sent_on),
        "stricter_passed": _stricter_passed(r, sent_on),
    }


@email(
    "reminder",
    "the 2FA deadline is near and this account still has none",
    when_compliant="skip",
    needs_packages=True,
)
def reminder(r: Recipient, stored: Mapping[str, Any], plan: Plan) -> dict[str, Any]:
    days_left = int(stored["days_before"])
    phase = _phase(plan, stored, r)
    # Counted from the day the reminder goes (the day it was queued for, or the day the
    # drain sends it when later: SENT_ON) to the deadline: the account's own (a snooze
    # since then moved it) or the phase's. A reminder caught up late (the queue missed
    # its day) said "in 14 days" with 12 left, and one sent the day after it was queued
    # for (an outage of the sender) "in 3 days" with 2.
    deadline = r.deadline or phase["deadline"]
    queued_on = run_day(stored, deadline - timedelta(days=days_left))
    sent_on = date.fromisoformat(stored[SENT_ON]) if stored.get(SENT_ON) else queued_on
    days_left = (deadline - max(queued_on, sent_on)).days
    return {
        **common(r, plan),
        **phase,
        "packages": list(r.packages),
        "days_left": days_left,
        "how_soon": how_soon(days_left),
        "stage": "reminder",
        # Sent on or after the deadline (queued --late): every line says so.
        "passed": how_soon(days_left) is None,
        "stricter_passed": _stricter_passed(r, max(queued_on, sent_on)),
    }


def how_soon(days_left: int) -> str | None:
    """How soon a deadline (00:00 UTC of its day) comes, in the words of an email sent
    ``days_left`` UTC days before that day, whatever the hour it goes: "in 3 days"; the
    day before, "within 24 hours" (sent at 09:00 it is 15 hours away: "in 1 day" said
    more time than there was, and "tomorrow" is today for most of the Americas); None
    once the day has come (a reminder queued ``--late``): the deadline has passed."""
    if days_left >= 2:
        return f"in {days_left} days"
    if days_left == 1:
        return "within 24 hours"
    return None


@email(
    "enforcement_notice",
    "2FA is now required; web sessions were signed out",
    when_compliant="adapt",
)
def enforcement_notice(r: Recipient, stored: Mapping[str, Any], plan: Plan) -> dict[str, Any]:
    return {
        **common(r, plan),
        **_phase(plan, stored, r, enforced=True),
        "stage": "enforced",
        "passed": True,
        "stricter_passed": _stricter_passed(r, stored.get(SENT_ON) or stored.get(RUN_DAY)),
    }


def _stricter_passed(r: Recipient | None, sent_on: Any) -> bool:
    """Whether the day the email goes (``sent_on``: a date, its ISO text, or None when
    not known) is on or after the day the stricter phase requires 2FA from: its line
    says "since", not "from" a day gone (a recommendation sent late, or enforced after
    the requiring phase's day)."""
    return (
        r is not None
        and r.stricter is not None
        and sent_on is not None
        and r.stricter.on <= _day(sent_on)
    )


@email(
    HEADS_UP_EMAIL,
    "a 24-hour rehearsal of login verification is coming",
    when_compliant="skip",
)
def brownout_heads_up(r: Recipient, stored: Mapping[str, Any], plan: Plan) -> dict[str, Any]:
    return {
        **common(r, plan),
        "starts_at": _time(stored["starts_at"]),
        "ends_at": _time(stored["ends_at"]),
        "hours": int(stored["hours"]),
    }


@email(
    ELV_HEADS_UP_EMAIL,
    "every login will need an emailed code from this day on",
    when_compliant="skip",
)
def elv_enrollment(r: Recipient, stored: Mapping[str, Any], plan: Plan) -> dict[str, Any]:
    return {**common(r, plan), "enrolled_on": _day(stored["enrolled_on"])}


@email(
    "org_removal_notice",
    "this account was removed from an org that requires 2FA",
    when_compliant="adapt",
)
def org_removal_notice(r: Recipient, stored: Mapping[str, Any], plan: Plan) -> dict[str, Any]:
    return {**common(r, plan), "org": stored["org"]}


@email(
    INVITATION_EMAIL,
    "an org that removed this account for lacking 2FA invites it back to a team",
    when_compliant="adapt",
)
def org_invitation(r: Recipient, stored: Mapping[str, Any], plan: Plan) -> dict[str, Any]:
    return {
        **common(r, plan),
        "org": stored["org"],
        "team": stored["team"],
        "invited_by": stored["invited_by"],
        "expires_at": _time(stored["expires_at"]),
        "accept_url": invitation_link(plan.notifications.invitations_url, str(stored["org"])),
    }


@email(
    "org_enforcement_summary",
    "to an org's owners: 2FA enforcement is on, who was removed",
    when_compliant="adapt",
)
def org_enforcement_summary(r: Recipient, stored: Mapping[str, Any], plan: Plan) -> dict[str, Any]:
    return {**common(r, plan), "org": stored["org"], "removed": list(stored.get("removed", []))}


@email(
    "phase_summary",
    "to release managers: what a phase's enforcement did, and the report",
    when_compliant="adapt",
)
def phase_summary(r: Recipient, stored: Mapping[str, Any], plan: Plan) -> dict[str, Any]:
    report_day = _day(stored[ENFORCED_ON]) if stored.get(ENFORCED_ON) else None
    return {
        **common(r, plan),
        **_phase(plan, stored),
        # A phase giving each account its own deadline enforces some accounts each day:
        # "deadline <the first>" read as if every account's had come.
        "own_deadlines": plan.phase(stored["phase"]).deadline is not None,
        # A banner's phase: its accounts fall short of what it recommends.
        "recommends_only": recommends_only(plan.phase(stored["phase"])),
        # "accounts required" of a banner's phase was false (counts_as_told).
        "counts": counts_as_told(plan.phase(stored["phase"]), stored.get("counts", {})),
        "run_id": stored.get("run_id", ""),
        # The report of the day the enforcement ran (a summary queued before the day was
        # stored with it: the reports folder).
        "report_day": report_day,
        "report_url": (
            report_link(plan.notifications.report_url, report_day)
            if report_day
            else plan.notifications.report_url
        ),
        # The accounts it acted on that no notice or reminder reached, with why (the
        # first of them; a summary from before this list existed has none).
        "unreached": list(stored.get("unreached", [])),
        "unreached_more": int(stored.get("unreached_more", 0)),
    }


@email(
    "snooze_reply",
    "the answer to this account's request to postpone its deadline: granted, or why not",
    when_compliant="adapt",
)
def snooze_reply(r: Recipient, stored: Mapping[str, Any], plan: Plan) -> dict[str, Any]:
    phase = plan.phase(stored["phase"])
    deadline = _day(stored["deadline"]) if stored["deadline"] else None
    # The day the reply goes (the drain's SENT_ON, else its queue run's day): a request
    # refused after its deadline was told the deadline "stays" that day, what the
    # registry asks "by then", and that "nothing changes" for an account that meets it:
    # all in the future, of a deadline past and a requirement in force.
    sent_on = stored.get(SENT_ON) or stored.get(RUN_DAY)
    return {
        **common(r, plan),
        "phase": phase.name,
        "granted": bool(stored["granted"]),
        "days": int(stored["days"]),
        # Granted: the new deadline; refused: the account's deadline as it stands, if
        # it has one (no notice yet, or not in the cohort: none).
        "deadline": deadline,
        "passed": deadline is not None and sent_on is not None and deadline <= _day(sent_on),
        "reason": str(stored["reason"]),
        "requirements": phase.requires.describe(),
        "snooze_url": plan.notifications.snooze_url,
        # Its footer names the campaign as the phase's other emails do (a phase with
        # per-account deadlines is never "2FA by one date").
        "classic": asks_only_2fa(phase),
        "recommends_only": recommends_only(phase),
    }
