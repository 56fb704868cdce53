"""When the registry's site has an org's invitation back accepted: the one definition
that recording it (rollout.phases.orgs.settle_invitations) and the send of its email
(rollout.notify.drain, which skips an invitation to a member back already) share."""

from __future__ import annotations

from sqlalchemy import ColumnElement, and_, exists, or_

from rollout.registry.models import OrgInvitation, OrgMember

INVITATIONS = OrgInvitation.__table__
MEMBERS = OrgMember.__table__


def member_again() -> ColumnElement[bool]:
    """SQL over ``org_invitations``: its account is a member of its org again, now or at
    any time since the invitation (it joined after the invitation was sent, and was
    removed again since): the invitation was accepted, whether or not a run of ours has
    recorded it so yet (its ``state`` is still ``pending`` until one does)."""
    return exists().where(
        and_(
            MEMBERS.c.org_id == INVITATIONS.c.org_id,
            MEMBERS.c.account_id == INVITATIONS.c.account_id,
            or_(
                MEMBERS.c.removed_at.is_(None),
                MEMBERS.c.joined_at >= INVITATIONS.c.created_at,
            ),
        )
    )
