"""what a phase can now do to an account: a warning banner, a security key required,
TOTP enrolment closed; and why a token was revoked

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


# Phases now do more than require 2FA and revoke web sessions (plans' `effects`):
# - warned_at: the registry's site shows the account a banner (PyPI's "warn" switch,
#   RubyGems' recommended tier) until it complies;
# - webauthn_required_at: 2FA must be a security key, TOTP no longer passes;
# - totp_enrolment_closed_at: the account can no longer set up TOTP (npm 2025);
# - tokens.revoked_reason: which phase revoked the token, as web_sessions has.


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("warned_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("webauthn_required_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("totp_enrolment_closed_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revoked_reason", sa.String(length=300), nullable=True))
    # Enforcement revokes the live tokens of the accounts it targets: find them by
    # account without reading the revoked ones.
    op.create_index(
        "ix_tokens_live",
        "tokens",
        ["account_id"],
        sqlite_where=sa.text("revoked_at IS NULL"),
        postgresql_where=sa.text("revoked_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_tokens_live", table_name="tokens")
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_column("revoked_reason")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("totp_enrolment_closed_at")
        batch_op.drop_column("webauthn_required_at")
        batch_op.drop_column("warned_at")
