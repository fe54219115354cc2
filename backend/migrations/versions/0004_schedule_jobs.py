"""jobs by schedule: the index behind GET /api/v1/schedules/{id}/jobs

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_schedule_created", "jobs", ["schedule_id", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_schedule_created", "jobs")
