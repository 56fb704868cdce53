"""A phase preview kept for the record: its CSV, its record, its markdown.

The release manager signs off on a list, so the list is saved as it was shown (a CSV
under ``reports/previews/``) with a JSON record beside it (who, when, the counts) that
``rollout plan show`` reads. A preview writes nothing to the registry. An org's
previews (rollout.phases.orgs) and a withdrawal's (rollout.phases.withdrawals) are saved
the same way (:func:`save_list`), each record with its ``kind``, so a refused apply can
name who changed since (read_rows).
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from rollout.core.controls import quoted, visible
from rollout.core.errors import GuardRefused
from rollout.core.files import remove_stale_temporaries, write_atomically
from rollout.core.fingerprints import list_fingerprint
from rollout.core.names import safe_path_component
from rollout.core.output import csv_value, markdown_quoted, write_csv
from rollout.core.output import markdown_text as md
from rollout.core.words import counted
from rollout.notify.reach import CATEGORIES, NOT_SENT_YET, SEND_FAILED, category
from rollout.registry.ledger import utc_now

if TYPE_CHECKING:
    from rollout.core.plan import Plan

COLUMNS = (
    "account_id",
    "username",
    "email",
    "last_login_at",
    "live_sessions",
    "already_required",
    "required_by_phase",
    "lacks_factor",
    "tokens_to_revoke",
    "deadline",
    "notice",
)
# The reasons an account was never reached whose warning may still go out, until its
# phase is enforced: then the send skips it, already enforced (PhasePreview.warnings_left_unsent).
UNSENT_CATEGORIES = (NOT_SENT_YET, SEND_FAILED)
# What the ``notice`` column says of an account a warning reached (else why not).
REACHED = "delivered"
# The tokens a phase that revokes tokens would revoke: their own CSV beside the accounts'.
TOKEN_COLUMNS = (
    "token_id",
    "account_id",
    "username",
    "kind",
    "name",
    "created_at",
    "last_used_at",
    "expires_at",
    "breaks",
)
# Rows the markdown artifact lists; the CSV always has them all.
MARKDOWN_ROWS = 50
# A saved record's ``kind``: a phase's preview (a record without one is one too, saved
# before org previews were), or an org's (rollout.phases.orgs).
PHASE_PREVIEW = "phase"


# What rollout.phases.enforce.preview_phase finds; kept here, with what reads it (the saved
# record, plan show, the approval artifact), so reading a preview loads no enforcement.
@dataclass(frozen=True)
class Target:
    account_id: int
    username: str
    email: str
    last_login_at: datetime | None
    live_sessions: int
    already_required: bool  # 2FA-required by any phase (the account's flag)
    # This phase requires it already (phase_requirements): enforced before, and not
    # rolled back. Enforcing again changes nothing for it.
    required_by_phase: bool = False
    # It lacks the second factor the phase asks for (else only its tokens fall short).
    lacks_factor: bool = True
    # Its live tokens that a token rule of the phase forbids.
    offending_tokens: int = 0
    # Its own deadline, in a phase with per-account deadlines (rollout.registry.deadlines).
    deadline: date | None = None
    # It sees the warning banner already (another phase, or an earlier run, set it), and
    # is closed to new TOTP set-ups already: enforcement sets neither again, nor counts it.
    warned_already: bool = False
    totp_closed_already: bool = False


@dataclass(frozen=True)
class TokenTarget:
    """A live token the phase forbids, of an account it targets."""

    token_id: int
    account_id: int
    username: str
    kind: str
    name: str | None
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    # The phase's token rules it breaks, in words (Requirements.describe), "; " between.
    breaks: str = ""


@dataclass
class PhasePreview:
    phase: str
    cohort: str
    targets: list[Target]
    compliant: int
    exempted: list[str]
    effects: tuple[str, ...] = ("require_2fa", "revoke_sessions")
    # The tokens enforcement would revoke (only when the phase revokes tokens), as
    # (token id, account id); ``tokens`` has their details, unless the preview was
    # taken without them (enforcement's own, under its lock, needs only the ids).
    token_ids: list[tuple[int, int]] = field(default_factory=list)
    tokens: list[TokenTarget] = field(default_factory=list)
    # The phase's requirements in words (Requirements.describe).
    requirements: tuple[str, ...] = ()
    token_rules: bool = False
    # Whether any second factor meets it (False: a security key is asked, and TOTP
    # users fall short too).
    any_second_factor: bool = True
    # With per-account deadlines: accounts that fall short but whose own deadline has
    # not come (untouched today), and of those, the ones never sent the notice (no
    # deadline at all: never enforced unwarned).
    per_account_deadlines: bool = False
    not_due: int = 0
    never_noticed: int = 0
    # Of the targets, those no warning of the phase reached (no notice or reminder
    # delivered: rollout.notify.reach), each with why; and the plan's limit on their
    # share (None: no limit).
    unreached: dict[int, str] = field(default_factory=dict)
    max_unreached_share: float | None = None
    # The plan's blast radius for the phase (max_accounts, max_tokens; None: none given).
    # Enforcement refuses a list over either, so the preview says so before it is approved.
    max_accounts: int | None = None
    max_tokens: int | None = None
    # Of the exempted, those this phase required before the exemption was added: the
    # exemption does not undo that (a rollback of the phase releases its accounts).
    exempt_but_required: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.targets)

    @property
    def fingerprint(self) -> str:
        """Which accounts (and tokens) the preview lists, in 12 hex digits: typed back
        with the count (``--expect-list``), it makes enforcement refuse another list of
        the same size (one account enrolled and another dropped its factor, a token
        rotated), which the count alone lets through."""
        return list_fingerprint(
            (t.account_id for t in self.targets), (token_id for token_id, _ in self.token_ids)
        )

    @property
    def asks_only_2fa(self) -> bool:
        """Whether "without 2FA" and "use 2FA" say who falls short and who does not: any
        second factor, no token rule. (A security-key phase's short accounts include
        TOTP users; its compliant ones, security-key holders only.)"""
        return not self.token_rules and self.any_second_factor

    @property
    def signs_out(self) -> bool:
        """Whether the phase revokes web sessions: what says "signed out" at all."""
        return "revoke_sessions" in self.effects

    @property
    def revokes_tokens(self) -> bool:
        return "revoke_tokens" in self.effects

    @property
    def sessions(self) -> int:
        """The live web sessions enforcement would revoke: those of the targets that
        lack the factor, when the phase revokes sessions."""
        if not self.signs_out:
            return 0
        return sum(t.live_sessions for t in self.targets if t.lacks_factor)

    @property
    def token_count(self) -> int:
        return len(self.token_ids)

    def tokens_by_rule(self) -> list[tuple[str, int]]:
        """(rule in words, how many of the listed tokens break it), in the plan's order
        of the rules, for a phase with more than one token rule (a token may break
        several, so the counts may add up to more than the tokens). Empty otherwise, or
        when the preview holds no token details."""
        rules = [r for r in self.requirements if r.startswith("no ")]
        if len(rules) < 2 or not self.tokens:
            return []
        counts = Counter(
            rule for t in self.tokens for rule in t.breaks.split("; ") if rule in rules
        )
        return [(rule, counts[rule]) for rule in rules]

    @property
    def required_by_phase(self) -> int:
        """Of the targets, how many this phase requires already (it was applied)."""
        return sum(t.required_by_phase for t in self.targets)

    @property
    def newly_warned(self) -> int:
        """Of the targets, how many enforcing the phase would newly show the banner (its
        ``accounts_warned``): not those who see it already."""
        if "warn" not in self.effects:
            return 0
        return sum(not t.warned_already for t in self.targets)

    @property
    def newly_totp_closed(self) -> int:
        """Of the targets, how many enforcing the phase would newly close to TOTP set-ups
        (its ``totp_enrolment_closed``): those lacking the factor asked, not closed yet."""
        if "close_totp_enrolment" not in self.effects:
            return 0
        return sum(t.lacks_factor and not t.totp_closed_already for t in self.targets)

    def effects_in_words(self) -> str:
        """The effects, the banner and TOTP closing each with how many accounts it newly
        reaches (what enforcement then counts), and how many it reaches already; the
        sessions' revocation as the rule it is (every live one when enforced), with how
        many are live now."""
        said = []
        for effect in self.effects:
            if effect == "warn":
                new = self.newly_warned
                said.append(
                    f"warn (the banner newly shown to {new}; {self.count - new} see it already)"
                )
            elif effect == "revoke_sessions":
                # A rule, not a list: every session live when the account's batch runs
                # (EnforceResult.sessions_signed_in_since_preview counts the newer ones).
                said.append(
                    f"revoke_sessions (every live web session of the accounts when "
                    f"enforced: {self.sessions} now, and any signed in since)"
                )
            elif effect == "close_totp_enrolment":
                new = self.newly_totp_closed
                lacking = sum(t.lacks_factor for t in self.targets)
                said.append(
                    f"close_totp_enrolment (newly closed to {new}; {lacking - new} closed already)"
                )
            else:
                said.append(effect)
        return ", ".join(said)

    @property
    def newly_required(self) -> int:
        """Of the targets, how many enforcing the phase would newly require."""
        return self.count - self.required_by_phase

    @property
    def unreached_share(self) -> float:
        return len(self.unreached) / self.count if self.count else 0.0

    @property
    def over_unreached_limit(self) -> bool:
        """More of the targets were never reached than the plan allows."""
        limit = self.max_unreached_share
        return limit is not None and self.unreached_share > limit

    def over_blast_radius(self, what: str) -> str | None:
        """Why enforcement would refuse this list as over the plan's blast radius for
        ``what`` ("accounts" or "tokens"), in the guard's words; None within it."""
        if what == "accounts":
            if self.max_accounts is None or self.count <= self.max_accounts:
                return None
            # Accounts the phase requires already count too: a run passes over them again
            # (sessions made since are signed out, tokens made since revoked).
            again = self.required_by_phase
            return (
                f"phase {self.phase} would change {counted(self.count, 'account')}"
                + (f" ({again} of them required by it already)" if again else "")
                + f", over the plan's blast-radius limit of {self.max_accounts}"
            )
        if self.max_tokens is None or self.token_count <= self.max_tokens:
            return None
        return (
            f"phase {self.phase} would revoke {counted(self.token_count, 'token')}, over the "
            f"plan's blast-radius limit of {self.max_tokens}"
        )

    def blast_radius_verdict(self) -> str | None:
        """One sentence for a preview over the plan's blast radius (None within it):
        enforcement refuses it, whatever count is typed back."""
        over = [
            reason
            for what in ("accounts", "tokens")
            if (reason := self.over_blast_radius(what)) is not None
        ]
        if not over:
            return None
        return (
            f"Over the blast radius: {'; '.join(over)}. Enforcement refuses it whatever "
            "count is typed back: change the plan's limit (max_accounts, max_tokens) "
            "deliberately, or release packages from the cohort."
        )

    @property
    def warnings_left_unsent(self) -> dict[str, int]:
        """Of the never reached, by category, those whose warning is still to be sent
        (queued, or failed and not retried): enforced first, it never is, as the send
        skips a warning to an account its phase has enforced (``already enforced``:
        rollout.notify.drain._enforced), so they learn of it from the enforcement notice."""
        return {
            why: n for why, n in self.unreached_by_category().items() if why in UNSENT_CATEGORIES
        }

    def unreached_by_category(self) -> dict[str, int]:
        """How many were never reached, by the category of why, most telling first."""
        counts = Counter(category(why) for why in self.unreached.values())
        return {c: counts[c] for c in [*CATEGORIES, *sorted(counts)] if counts.get(c)}


@dataclass(frozen=True)
class SavedPreview:
    preview: PhasePreview
    run_id: str
    csv_path: Path
    at: datetime


def preview_rows(preview: PhasePreview) -> list[dict[str, Any]]:
    return [
        {
            "account_id": t.account_id,
            "username": t.username,
            "email": t.email,
            "last_login_at": t.last_login_at,
            "live_sessions": t.live_sessions,
            "already_required": t.already_required,
            "required_by_phase": t.required_by_phase,
            "lacks_factor": t.lacks_factor,
            "tokens_to_revoke": t.offending_tokens if preview.revokes_tokens else 0,
            "deadline": t.deadline,
            "notice": preview.unreached.get(t.account_id, REACHED),
        }
        for t in preview.targets
    ]


def token_rows(preview: PhasePreview) -> list[dict[str, Any]]:
    return [{c: getattr(t, c) for c in TOKEN_COLUMNS} for t in preview.tokens]


def preview_path(reports_dir: Path, stem: str, at: datetime, run_id: str) -> Path:
    """Where a preview's CSV goes: ``reports/previews/<stem>-<time>-<id>.csv`` (``stem``
    already safe as a file name: safe_path_component, file_stem_for), its record beside
    it (``.json``). Kept: never pruned, backed up (docs/runbook-operator.md)."""
    return reports_dir / "previews" / f"{stem}-{at:%Y%m%dT%H%M%S}-{run_id[:8]}.csv"


def csv_text(columns: tuple[str, ...], rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    write_csv(out, columns, rows)
    return out.getvalue()


def save_list(
    reports_dir: Path,
    stem: str,
    columns: tuple[str, ...],
    rows: list[dict[str, Any]],
    record: dict[str, Any],
) -> tuple[Path, str, datetime]:
    """Save a preview's list as a phase preview is: its CSV, then its record (``record``
    with the run's id, time and the CSV's name) beside it, last, each written
    atomically, so a record always has its list. Returns (CSV path, run id, time)."""
    at = utc_now()
    run_id = uuid.uuid4().hex
    path = preview_path(reports_dir, stem, at, run_id)
    remove_stale_temporaries(path.parent)  # a killed preview's half-written lists
    write_atomically(path, csv_text(columns, rows))
    record = {**record, "run_id": run_id, "at": at.isoformat(), "csv": path.name}
    write_atomically(path.with_suffix(".json"), json.dumps(record, indent=2))
    return path, run_id, at


def save_preview(
    plan: Plan, preview: PhasePreview, reports_dir: Path, *, actor: str
) -> SavedPreview:
    """Write the preview's CSV, then its record (``.json`` beside it, last: a record
    always has its list)."""
    at = utc_now()
    run_id = uuid.uuid4().hex
    path = preview_path(reports_dir, safe_path_component(preview.phase, "phase"), at, run_id)
    remove_stale_temporaries(path.parent)  # a killed preview's half-written lists
    write_atomically(path, csv_text(COLUMNS, preview_rows(preview)))
    tokens_csv = None
    if preview.revokes_tokens:
        tokens_csv = path.with_name(path.stem + "-tokens.csv")
        write_atomically(tokens_csv, csv_text(TOKEN_COLUMNS, token_rows(preview)))
    record = {
        "kind": PHASE_PREVIEW,
        "plan": plan.name,
        "phase": preview.phase,
        "run_id": run_id,
        "at": at.isoformat(),
        "actor": actor,
        "accounts": preview.count,
        "sessions": preview.sessions,
        # After the phase was applied the list still holds whom it requires (until they
        # enrol): those are not changed again, only the newly required are.
        "required_by_phase": preview.required_by_phase,
        "newly_required": preview.newly_required,
        # Of the banner and TOTP closing, those it newly reaches: what enforcement counts.
        "newly_warned": preview.newly_warned,
        "newly_totp_closed": preview.newly_totp_closed,
        "compliant": preview.compliant,
        "exempted": len(preview.exempted),
        "effects": list(preview.effects),
        "tokens": preview.token_count,
        "not_due": preview.not_due,
        "never_noticed": preview.never_noticed,
        "unreached": len(preview.unreached),
        "unreached_by_category": preview.unreached_by_category(),
        "max_unreached_share": preview.max_unreached_share,
        "csv": path.name,
        "tokens_csv": tokens_csv.name if tokens_csv else None,
        # What its apply types back (--expect-list): a refusal finds the preview by it,
        # to say who changed since (changed_since).
        "fingerprint": preview.fingerprint,
    }
    write_atomically(path.with_suffix(".json"), json.dumps(record, indent=2))
    return SavedPreview(preview, run_id, path, at)


# What a preview record holds that its readers use (plan show, a refused enforcement's
# "changed since"), and of what JSON type: a record without one of them, or with another
# type, is not read (a list, a number for the time, a file name that is a number).
# What a phase preview's record must hold for its readers (plan show, a refusal naming
# who changed), each of its type; another kind's record says what it needs itself.
PHASE_RECORD_FIELDS: dict[str, type] = {
    "plan": str,
    "phase": str,
    "run_id": str,
    "actor": str,
    "at": str,
    "accounts": int,
    "sessions": int,
    "compliant": int,
    "exempted": int,
    "csv": str,
}


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true or false"}.get(
        type(value), "null" if value is None else "a number"
    )


def _bare_file_name(value: Any) -> bool:
    """A file's name beside the record, not a path (``../``, ``/etc/...``) to read."""
    return isinstance(value, str) and value not in ("", ".", "..") and Path(value).name == value


def _preview_record(path: Path, kind: str, fields: dict[str, type]) -> dict[str, Any] | None:
    """The record ``path`` holds, its time read, or None when it is another kind's (an
    org's beside a phase's: each reader reads its own); ValueError saying what is wrong."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"not UTF-8 text ({error.reason})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON (line {error.lineno}: {error.msg})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{_json_type(record)}, not a JSON object")
    # A record without a kind was saved before org previews were: a phase's.
    if record.get("kind", PHASE_PREVIEW) != kind:
        return None
    for key, expected_type in fields.items():
        if key not in record:
            raise ValueError(f"no {key!r}")
        value = record[key]
        # JSON's true is a Python int too: not a count.
        if not isinstance(value, expected_type) or isinstance(value, bool):
            expected = "a string" if expected_type is str else "a whole number"
            raise ValueError(f"{key!r} is {_json_type(value)}, not {expected}")
    try:
        at = datetime.fromisoformat(record["at"])
    except ValueError:
        raise ValueError(f"'at' is not a time: {visible(record['at'][:40])}") from None
    # Saved in UTC without an offset (utc_now), as every time here is: one given with an
    # offset (edited by hand) is that time in UTC, not one that cannot be compared.
    record["at"] = at if at.tzinfo is None else at.astimezone(UTC).replace(tzinfo=None)
    for key in ("csv", "tokens_csv"):
        value = record.get(key)
        if (key == "csv" or value is not None) and not _bare_file_name(value):
            raise ValueError(f"{key!r} is not the name of a file beside it")
    return record


def saved_previews(
    reports_dir: Path,
    skipped: list[str] | None = None,
    *,
    kind: str = PHASE_PREVIEW,
    fields: dict[str, type] | None = None,
) -> list[dict[str, Any]]:
    """Every preview record of ``kind`` under ``reports/previews/``, oldest first, each
    holding ``fields`` (a phase preview's by default; every record needs its time
    ``at`` and its list ``csv``). A file there that is not one (edited, cut short,
    another tool's) is left out, and said in ``skipped`` (its name and what is wrong
    with it): plan show warns of it and shows the rest, a refused enforcement's refusal
    stands without it. Another kind's records are left out, unsaid."""
    needed = {"at": str, "csv": str, **(PHASE_RECORD_FIELDS if fields is None else fields)}
    records = []
    for path in sorted((reports_dir / "previews").glob("*.json")):
        try:
            record = _preview_record(path, kind, needed)
        except (OSError, ValueError) as error:
            why = error.strerror if isinstance(error, OSError) and error.strerror else error
            if skipped is not None:
                skipped.append(f"{visible(path)}: not read as a preview record: {why}")
            continue
        if record is not None:
            records.append(record)
    return sorted(records, key=lambda r: r["at"])


def read_rows(path: Path, key: str) -> dict[int, dict[str, str]]:
    """Each row of a preview's CSV by ``key`` (an id), every cell as the value it was
    (csv_value: the guard csv_cell put on taken off again). ValueError for a row of more
    or fewer cells than the header (edited by hand, cut short): not a list as saved."""
    rows = {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for row in reader:
            if None in row or None in row.values():
                raise ValueError(f"line {reader.line_num}: not as many cells as the header")
            rows[int(row[key])] = {c: csv_value(v) for c, v in row.items()}
    return rows


def _read_column_pairs(path: Path, key: str, value: str) -> dict[int, str]:
    """``key`` (an id) to ``value`` of each row of a preview's CSV (read_rows)."""
    return {k: row[value] for k, row in read_rows(path, key).items()}


def shown_list(items: list[str], limit: int = 5) -> str:
    """The first ``limit`` items, then how many more, on one line (a flow run's state
    message, a log line). Each item is the tool's own words with any value in it quoted
    already (:func:`rollout.core.controls.quoted`): ``'di': developer to owner``."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def names_shown(names: list[str], limit: int = 5) -> str:
    """The first ``limit`` names, then how many more: each name data, quoted (``'bob',
    'carol'``: :func:`rollout.core.controls.quoted`), so a username holding ``, `` or
    ``); 1 account newly listed (`` cannot read as other names or more of the sentence;
    its control characters shown as escapes."""
    return shown_list([quoted(name) for name in names], limit)


# What a saved preview's list may fail with when read (edited by hand, cut short,
# removed): a refusal naming what changed since it then stands on its own.
UNREADABLE_LIST = (OSError, KeyError, ValueError, TypeError, csv.Error)

_Refused = TypeVar("_Refused", bound=GuardRefused)
_Then = TypeVar("_Then")


def naming_changes_since(
    refused: GuardRefused,
    typed: str | None,
    kind: type[_Refused],
    changes: Callable[[_Refused, str], str | None],
) -> GuardRefused:
    """``refused``, and when it is a list not as previewed (a ``kind``: NotAsPreviewed,
    MembersNotAsPreviewed, EmailsNotAsPreviewed) whose approved preview's fingerprint was
    typed back (``typed``), saying what changed since (``changes``, as
    :func:`changed_since_preview` says it); else, or when that says nothing, as it is."""
    if not isinstance(refused, kind) or typed is None:
        return refused
    changed = changes(refused, typed)
    if changed is None:
        return refused
    return GuardRefused(f"{refused}; {changed}")


def _typed_preview(
    reports_dir: Path,
    typed: str,
    matches: Callable[[dict[str, Any]], bool],
    *,
    kind: str = PHASE_PREVIEW,
    fields: dict[str, type] | None = None,
) -> dict[str, Any] | None:
    """The latest preview record of ``kind`` under ``reports/previews/`` (saved_previews)
    whose list's fingerprint was typed back (``typed``) and that ``matches``; None when
    none is saved here."""
    typed = typed.strip().lower()
    found = [
        r
        for r in saved_previews(reports_dir, kind=kind, fields=fields)
        if r.get("fingerprint") == typed and matches(r)
    ]
    return found[-1] if found else None


def changed_since_preview(
    reports_dir: Path,
    typed: str,
    *,
    matches: Callable[[dict[str, Any]], bool],
    read: Callable[[Path, dict[str, Any]], _Then],
    differences: Callable[[dict[str, Any], _Then], list[str] | None],
    kind: str = PHASE_PREVIEW,
    fields: dict[str, type] | None = None,
) -> str | None:
    """What changed since the saved preview whose list's fingerprint was typed back
    (``typed``): the latest record of ``kind`` under ``reports/previews/`` holding
    ``fields`` (saved_previews) that ``matches`` (its phase, org or selection), its list
    read from that folder (``read``: any of UNREADABLE_LIST for a list it cannot read),
    and compared with the present (``differences``: the parts to say, none when nothing
    differs), after the preview's time and file. None when no such preview is saved here
    (taken on another machine, or its files removed), or when its list cannot be read or
    differs in nothing: the refusal then stands on its own."""
    record = _typed_preview(reports_dir, typed, matches, kind=kind, fields=fields)
    if record is None:
        return None
    try:
        then = read(reports_dir / "previews", record)
    except UNREADABLE_LIST:
        return None
    parts = differences(record, then)
    if not parts:
        return None
    return (
        f"since the preview of {record['at']:%Y-%m-%d %H:%M:%S} UTC ({visible(record['csv'])}): "
        + "; ".join(parts)
    )


def changed_since(reports_dir: Path, fresh: PhasePreview, typed: str) -> str | None:
    """Who changed since the phase preview whose list's fingerprint was typed back
    (``typed``, the latest of ``fresh``'s phase saved under ``reports/previews/``),
    against the list taken now (``fresh``): the accounts no longer listed and those
    newly listed, by name (and the tokens, counted), as :func:`changed_since_preview`
    says it. None when the list taken now is the one typed back."""
    if fresh.fingerprint == typed.strip().lower():
        return None

    def read(folder: Path, record: dict[str, Any]) -> tuple[dict[int, str], set[int]]:
        then = _read_column_pairs(folder / record["csv"], "account_id", "username")
        tokens_csv = record.get("tokens_csv")
        then_tokens = (
            set(_read_column_pairs(folder / tokens_csv, "token_id", "username"))
            if tokens_csv
            else set()
        )
        return then, then_tokens

    def differences(_: dict[str, Any], listed: tuple[dict[int, str], set[int]]) -> list[str]:
        then, then_tokens = listed
        now = {t.account_id: t.username for t in fresh.targets}
        gone = sorted(then[a] for a in then.keys() - now.keys())
        new = sorted(now[a] for a in now.keys() - then.keys())
        # Said even when no account changed: the fingerprint differs, so the tokens did.
        parts = [
            f"{counted(len(gone), 'account')} no longer listed"
            + (f" ({names_shown(gone)})" if gone else ""),
            f"{counted(len(new), 'account')} newly listed"
            + (f" ({names_shown(new)})" if new else ""),
        ]
        tokens_now = {token_id for token_id, _ in fresh.token_ids}
        if then_tokens != tokens_now:
            parts.append(
                f"{counted(len(then_tokens - tokens_now), 'token')} no longer listed, "
                f"{len(tokens_now - then_tokens)} newly listed"
            )
        return parts

    return changed_since_preview(
        reports_dir,
        typed,
        matches=lambda record: record.get("phase") == fresh.phase,
        read=read,
        differences=differences,
    )


def approved_preview_at(reports_dir: Path, phase: str, typed: str | None) -> datetime | None:
    """When the phase's preview whose list's fingerprint was typed back (``typed``) was
    taken: the latest such record saved under ``reports/previews/``. None when none is
    saved here (taken on another machine, its files removed) or nothing was typed."""
    if typed is None:
        return None
    record = _typed_preview(reports_dir, typed, lambda r: r.get("phase") == phase)
    return record["at"] if record is not None else None


def _accounts_label(p: PhasePreview) -> str:
    # The npm 2022 wording where the phase asks only for 2FA, which every artifact and
    # runbook so far quotes.
    if p.asks_only_2fa:
        return "accounts without 2FA to require it of"
    return "accounts that fall short of the phase's requirements"


def _table(
    columns: tuple[str, ...], rows: list[dict[str, Any]], limit: int, rest: str
) -> list[str]:
    """A markdown table of the first ``limit`` rows, every value through md()."""
    if not rows:
        return []
    lines = ["", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows[:limit]:
        lines.append("| " + " | ".join(md(row[c]) for c in columns) + " |")
    if len(rows) > limit:
        lines += ["", f"... and {len(rows) - limit} more in {rest}."]
    return lines


def reach_verdict(p: PhasePreview) -> str:
    """One sentence on the reach guard: within the plan's limit, or over it (and what
    enforcing anyway takes); then, if any, how many of them have a warning waiting that
    enforcing now leaves unsent for good (:attr:`PhasePreview.warnings_left_unsent`)."""
    unreached = len(p.unreached)
    share = f"{unreached} of {p.count} ({p.unreached_share:.1%})"
    if p.max_unreached_share is None:
        verdict = f"Never reached: {share}; the plan sets no limit (max_unreached_share)."
    elif not p.over_unreached_limit:
        verdict = f"Never reached: {share}, within the plan's limit of {p.max_unreached_share:.1%}."
    else:
        verdict = (
            f"Never reached: {share}, over the plan's limit of {p.max_unreached_share:.1%}: "
            f"enforcement refuses unless the count is typed back (--accept-unreached {unreached})."
        )
    unsent = p.warnings_left_unsent
    if unsent:
        # What enforcing does to them beyond the list: their warning never goes out.
        verdict += (
            f" {counted(sum(unsent.values()), 'account')} of them "
            f"({', '.join(f'{why} {n}' for why, n in unsent.items())}) would never get "
            "their notice or reminder once enforced: the send skips it as already "
            "enforced (send it first: rollout notify send --apply, with --retry-failed for "
            "a failed one)."
        )
    return verdict


def _reach_lines(p: PhasePreview, limit: int) -> list[str]:
    """Who was never warned, by why: a release manager decides on them before enforcing."""
    if not p.unreached:
        return ["", "Every account listed was reached by a notice or a reminder."]
    lines = [
        "",
        "## Never reached",
        "",
        # The tool's own words and numbers: no registry value to escape.
        reach_verdict(p),
        "",
        "| why | accounts |",
        "| --- | ---: |",
    ]
    lines += [f"| {md(why)} | {count} |" for why, count in p.unreached_by_category().items()]
    by_id = {t.account_id: t for t in p.targets}
    rows = [
        {"username": by_id[a].username, "email": by_id[a].email, "why": why}
        for a, why in p.unreached.items()
    ]
    lines += _table(("username", "email", "why"), rows, limit, "the CSV (column notice)")
    return lines


def acted_word(effects: Sequence[str]) -> str:
    """What enforcing a phase does to an account short of it, in a preview's words:
    "required" of a phase requiring 2FA; "acted on" of one requiring none (a banner and
    TOTP set-ups closed, its emails only recommending; tokens revoked), which requires
    nothing of the account's login."""
    return "required" if "require_2fa" in effects else "acted on"


def preview_markdown(saved: SavedPreview, limit: int = MARKDOWN_ROWS) -> str:
    """The artifact a release manager reads before approving an enforce run."""
    p = saved.preview
    requires_2fa = "require_2fa" in p.effects
    acted, acted_verb = ("requires", "require") if requires_2fa else ("acts on", "act on")
    # Every value through md(), never inside `code`: a backtick in a name would end it.
    lines = [
        f"# Phase {md(p.phase)}: preview",
        "",
        f"Cohort {md(p.cohort)}, previewed {saved.at:%Y-%m-%d %H:%M} UTC (run `{saved.run_id}`).",
        "",
        f"Requires: {md('; '.join(p.requirements))}. Enforcement does: {md(', '.join(p.effects))}.",
        "",
        "| what | count |",
        "| --- | ---: |",
        f"| {_accounts_label(p)} | {p.count} |",
        f"| of which this phase {acted} already (enforced) | {p.required_by_phase} |",
        f"| of which it would newly {acted_verb} | {p.newly_required} |",
    ]
    if "warn" in p.effects:
        lines.append(f"| of which the banner would newly be shown to | {p.newly_warned} |")
    if "close_totp_enrolment" in p.effects:
        lines.append(f"| of which newly closed to TOTP set-ups | {p.newly_totp_closed} |")
    if p.signs_out:
        # Every live one when enforced: one signed in since too (counted apart then).
        lines.append(
            f"| their live web sessions to revoke (now; any signed in since too) | {p.sessions} |"
        )
    if p.revokes_tokens:
        lines.append(f"| their tokens to revoke (irreversible) | {p.token_count} |")
        lines += [
            f"| of which break the rule: {md(rule)} | {count} |"
            for rule, count in p.tokens_by_rule()
        ]
    if p.per_account_deadlines:
        lines += [
            f"| short, their own deadline still to come (untouched today) | {p.not_due} |",
            f"| of which never sent the notice: no deadline yet | {p.never_noticed} |",
        ]
    lines += [
        f"| of which no notice or reminder reached (never warned) | {len(p.unreached)} |",
        f"| accounts already compliant (untouched) | {p.compliant} |",
        f"| accounts exempted by the plan (untouched) | {len(p.exempted)} |",
        "",
        # Not the CLI's `--apply` command: the approver approves the paused run, and
        # pasting a command from here would enforce without that approval.
        f"To apply, approve the paused phase-enforce run with the expected count **{p.count}**.",
        "",
        f"Full list: {md(saved.csv_path)}.",
    ]
    over = p.blast_radius_verdict()
    if over is not None:
        # The tool's own words and numbers, but the phase's name is the plan's: escaped.
        lines[-3:-3] = [md(over), ""]
    lines += _reach_lines(p, limit)
    lines += _table(COLUMNS, preview_rows(p), limit, "the CSV")
    lines += _table(TOKEN_COLUMNS, token_rows(p), limit, "the tokens' CSV")
    if p.exempted:
        # Each name quoted, as the console's `exempted:` says it: a username holding
        # ", " is one person exempted, not two.
        lines += ["", "Exempted: " + ", ".join(markdown_quoted(name) for name in p.exempted)]
    if p.exempt_but_required:
        lines += [
            "",
            "Exempted but required by this phase before the exemption (a rollback of the "
            "phase releases them): "
            + ", ".join(markdown_quoted(name) for name in p.exempt_but_required),
        ]
    return "\n".join(lines) + "\n"
