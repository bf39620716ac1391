"""tus uploads: sequential offsets, deferred lengths, partial uploads, direct-upload tokens

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("upload_sessions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("offset", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.alter_column("size", existing_type=sa.BigInteger(), nullable=True)
        batch_op.alter_column("source_id", existing_type=sa.String(length=40), nullable=True)
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.alter_column("size", existing_type=sa.BigInteger(), nullable=True)

    op.create_table(
        "upload_tokens",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("owner_id", sa.String(length=40), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("max_size", sa.BigInteger(), nullable=False),
        sa.Column("kinds", sa.JSON(), nullable=True),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("upload_id", sa.String(length=40), nullable=True),
        sa.Column("parts", sa.JSON(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["owners.id"],
            name=op.f("fk_upload_tokens_owner_id_owners"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_upload_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_upload_tokens_token_hash")),
    )
    with op.batch_alter_table("upload_tokens", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_upload_tokens_expires_at"), ["expires_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_upload_tokens_owner_id"), ["owner_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("upload_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_upload_tokens_owner_id"))
        batch_op.drop_index(batch_op.f("ix_upload_tokens_expires_at"))
    op.drop_table("upload_tokens")
    with op.batch_alter_table("sources", schema=None) as batch_op:
        batch_op.alter_column("size", existing_type=sa.BigInteger(), nullable=False)
    with op.batch_alter_table("upload_sessions", schema=None) as batch_op:
        batch_op.alter_column("source_id", existing_type=sa.String(length=40), nullable=False)
        batch_op.alter_column("size", existing_type=sa.BigInteger(), nullable=False)
        batch_op.drop_column("offset")
