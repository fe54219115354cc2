"""schedules: cron rows that the scheduler daemon fires

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from backend.db import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(64)),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("task", sa.String(200), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("max_retries", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cron", sa.String(200), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False, server_default="UTC"),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("last_run_at", UTCDateTime()),
        sa.Column("next_run_at", UTCDateTime()),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(200)),
    )
    op.create_index("ix_schedules_enabled_next_run", "schedules", ["enabled", "next_run_at"])
    op.create_index("ix_schedules_created_id", "schedules", ["created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_schedules_created_id", "schedules")
    op.drop_index("ix_schedules_enabled_next_run", "schedules")
    op.drop_table("schedules")
