"""job control: requeue epochs, delays, idempotency, pruning

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from backend.db import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("epoch", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("run_at", UTCDateTime()))
        batch.add_column(sa.Column("idempotency_hash", sa.String(64)))
        batch.add_column(sa.Column("idempotency_expires_at", UTCDateTime()))
    op.create_index("ux_jobs_idempotency_key", "jobs", ["idempotency_key"], unique=True)
    op.create_index("ix_jobs_status_finished", "jobs", ["status", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_status_finished", "jobs")
    op.drop_index("ux_jobs_idempotency_key", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("idempotency_expires_at")
        batch.drop_column("idempotency_hash")
        batch.drop_column("run_at")
        batch.drop_column("epoch")
