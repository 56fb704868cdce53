"""A withdrawal's preview kept for the record, as a phase's is (rollout.phases.previews).

A withdrawn email is never queued again, so ``rollout notify withdraw`` saves the list
it showed (one row per email: its id, account, kind, phase, occasion and state) under
``reports/previews/`` (``withdraw-...csv``, its record beside it: save_list). An apply
refused as not previewed then names which emails changed since (:func:`naming_email_changes`):
those no longer listed (sent, say) and those newly listed (queued since), counted, a few
shown, as data.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from rollout.core.controls import quoted, visible
from rollout.core.errors import GuardRefused
from rollout.core.names import file_stem_for
from rollout.core.words import counted
from rollout.notify.withdraw import (
    ACCOUNTS,
    IN_FLIGHT,
    LIST_COLUMNS,
    NOT_GONE,
    NOTIFICATIONS,
    EmailsNotAsPreviewed,
    Selection,
    listed_fingerprint,
)
from rollout.phases.previews import (
    changed_since_preview,
    naming_changes_since,
    read_rows,
    save_list,
    shown_list,
)
from rollout.registry import Registry

# A saved record's ``kind`` (rollout.phases.previews.saved_previews reads each kind apart).
WITHDRAW_PREVIEW = "withdraw"
# What a withdrawal preview's record must hold for a refusal to name what changed since
# it; its selection (``phase``, ``email``: a string, or null for any) is compared as is.
_RECORD_FIELDS: dict[str, type] = {
    "actor": str,
    "emails": int,
    "in_flight": int,
    "fingerprint": str,
}
# The emails a refusal shows of each side (the rest counted): the CSV has them all.
SHOWN = 5


def preview_stem(selection: Selection) -> str:
    """The file name's start of a withdrawal's saved preview: ``withdraw``, then the
    phase and the kind given (a phase's name may be an org's, ``org:NAME``, any
    character: made safe, file_stem_for)."""
    parts = ["withdraw"]
    parts += [
        file_stem_for(part) for part in (selection.phase, selection.email) if part is not None
    ]
    return "-".join(parts)


def save_withdraw_preview(
    reports_dir: Path, selection: Selection, listed: list[dict[str, Any]], *, actor: str
) -> Path:
    """Save the emails a withdrawal would take back or mark (withdraw_list), as the
    preview showed them, under ``reports/previews/``, its record beside it (the
    selection, who, the counts, the list's fingerprint). Returns the CSV's path."""
    record = {
        "kind": WITHDRAW_PREVIEW,
        "phase": selection.phase,
        "email": selection.email,
        "actor": actor,
        "emails": sum(row["state"] in NOT_GONE for row in listed),
        "in_flight": sum(row["state"] == IN_FLIGHT for row in listed),
        # What its apply types back (--expect-list): a refusal finds the preview by it.
        "fingerprint": listed_fingerprint(listed),
    }
    path, _, _ = save_list(reports_dir, preview_stem(selection), LIST_COLUMNS, listed, record)
    return path


def naming_email_changes(
    refused: GuardRefused, registry: Registry, reports_dir: Path, typed: str | None
) -> GuardRefused:
    """``refused``, and when it is a list not as previewed (EmailsNotAsPreviewed) whose
    preview (``typed``: its fingerprint) is saved under ``reports_dir``, saying which
    emails changed since (:func:`emails_changed_since`); else as it is."""
    return naming_changes_since(
        refused,
        typed,
        EmailsNotAsPreviewed,
        lambda refused, typed: emails_changed_since(registry, reports_dir, refused, typed),
    )


def emails_changed_since(
    registry: Registry, reports_dir: Path, refused: EmailsNotAsPreviewed, typed: str
) -> str | None:
    """Which emails changed since the withdrawal's preview whose list's fingerprint was
    typed back (the latest of the same selection saved under ``reports/previews/``),
    against those it would take now (``refused.taken``): those no longer listed, with
    what they are now (sent, being sent, ...), and those newly listed, counted, the
    first few shown as data (visible), as changed_since_preview says it (None when there
    is no such preview here, or it cannot be read or differs in nothing, or the outbox
    cannot be read)."""
    selection = refused.selection

    def read(folder: Path, record: dict[str, Any]) -> dict[int, dict[str, str]]:
        rows = read_rows(folder / record["csv"], "notification_id")
        # Those in flight then were marked, not taken: not in the list typed back.
        return {i: row for i, row in rows.items() if row["state"] in NOT_GONE}

    def differences(_: dict[str, Any], then: dict[int, dict[str, str]]) -> list[str] | None:
        gone = sorted(then.keys() - refused.taken)
        new = sorted(refused.taken - then.keys())
        if not (gone or new):
            return None
        try:
            now = _emails(registry, [*gone[:SHOWN], *new[:SHOWN]])
        except SQLAlchemyError:
            return None  # the refusal stands on its own
        gone_said = [
            _described(then[i])
            + (f": now {now[i]['state']}" if i in now else ": no longer in the outbox")
            for i in gone[:SHOWN]
        ]
        new_said = [_described(now[i]) if i in now else f"#{i}" for i in new[:SHOWN]]
        return [
            f"{counted(len(gone), 'email')} no longer listed" + _shown(gone_said, len(gone)),
            f"{counted(len(new), 'email')} newly listed" + _shown(new_said, len(new)),
        ]

    return changed_since_preview(
        reports_dir,
        typed,
        kind=WITHDRAW_PREVIEW,
        fields=_RECORD_FIELDS,
        matches=lambda record: (
            record.get("phase") == selection.phase and record.get("email") == selection.email
        ),
        read=read,
        differences=differences,
    )


def _emails(registry: Registry, ids: list[int]) -> dict[int, dict[str, Any]]:
    """The emails ``ids`` as they are now (LIST_COLUMNS), by id; one gone is left out."""
    if not ids:
        return {}
    c = NOTIFICATIONS.c
    with registry.engine.connect() as connection:
        rows = connection.execute(
            select(c.id, c.account_id, ACCOUNTS.c.username, c.email, c.phase, c.occasion, c.state)
            .select_from(NOTIFICATIONS.outerjoin(ACCOUNTS, ACCOUNTS.c.id == c.account_id))
            .where(c.id.in_(ids))
        ).all()
    return {row[0]: dict(zip(LIST_COLUMNS, row, strict=True)) for row in rows}


def _described(row: Mapping[str, Any]) -> str:
    """One email in a few words: ``#12 reminder 3d to alice`` (its account's id when the
    account is gone). Its values are the registry's, shown as data: the username quoted
    (``to 'alice'``: a name holding ``, `` or ``)`` reads as one name), the rest with its
    control characters shown."""
    who = quoted(row["username"]) if row["username"] else f"account {row['account_id']}"
    kind = str(row["email"]) + (f" {row['occasion']}" if row["occasion"] else "")
    return visible(f"#{row['notification_id']} {kind}") + f" to {who}"


def _shown(said: list[str], total: int) -> str:
    """`` (the first few, and N more)``, or nothing for none."""
    if not said:
        return ""
    more = total - len(said)
    return f" ({shown_list(said)}" + (f" and {more} more" if more > 0 else "") + ")"
