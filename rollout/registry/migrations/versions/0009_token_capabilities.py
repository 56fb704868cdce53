"""token capabilities: granular tokens, what a token can do, its scopes and expiry

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-10
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from rollout.core.errors import GuardRefused

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


# Campaigns since npm's 2022 one harden tokens rather than logins: classic tokens
# revoked, tokens that bypass 2FA losing their power, no token older than N days. The
# registry now says of each token what it can do (publish, publish without a second
# factor), what it may touch and when it expires, and knows npm's granular tokens.
# Rows from before this revision are classic tokens: what they can do follows from their
# kind; they had no scopes and did not expire.

_CLASSIC = "kind IN ('automation', 'publish', 'read_only')"
_ALL = "kind IN ('automation', 'publish', 'read_only', 'granular')"
_CAPABILITIES = (
    "(kind <> 'read_only' OR (NOT writes AND NOT bypass_2fa))"
    " AND (kind <> 'publish' OR (writes AND NOT bypass_2fa))"
    " AND (kind <> 'automation' OR (writes AND bypass_2fa))"
)


def upgrade() -> None:
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("writes", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("bypass_2fa", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("scopes", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(), nullable=True))
    op.execute(
        "UPDATE tokens SET writes = (kind IN ('publish', 'automation')), "
        "bypass_2fa = (kind = 'automation')"
    )
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.alter_column("writes", existing_type=sa.Boolean(), nullable=False)
        batch_op.alter_column("bypass_2fa", existing_type=sa.Boolean(), nullable=False)
        batch_op.drop_constraint(op.f("ck_tokens_kind"), type_="check")
        batch_op.create_check_constraint(op.f("ck_tokens_kind"), _ALL)
        batch_op.create_check_constraint(op.f("ck_tokens_capabilities"), _CAPABILITIES)
        batch_op.create_check_constraint(
            op.f("ck_tokens_expiry"), "expires_at IS NULL OR expires_at > created_at"
        )


def downgrade() -> None:
    # Checked before anything changes: SQLite does not roll DDL back.
    granular = (
        op.get_bind()
        .execute(sa.text("SELECT count(*) FROM tokens WHERE kind = 'granular'"))
        .scalar_one()
    )
    if granular:
        raise GuardRefused(
            f"cannot downgrade below 0009: {granular} granular token(s), a kind revision "
            "0008 does not know (revoke and delete them first); nothing was changed"
        )
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_tokens_expiry"), type_="check")
        batch_op.drop_constraint(op.f("ck_tokens_capabilities"), type_="check")
        batch_op.drop_constraint(op.f("ck_tokens_kind"), type_="check")
        batch_op.create_check_constraint(op.f("ck_tokens_kind"), _CLASSIC)
        batch_op.drop_column("expires_at")
        batch_op.drop_column("scopes")
        batch_op.drop_column("bypass_2fa")
        batch_op.drop_column("writes")
