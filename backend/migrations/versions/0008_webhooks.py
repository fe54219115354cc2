"""webhooks: deliveries, a schedule's webhook_url, and each tenant's signing secret

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from backend.db import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(120), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status_code", sa.Integer()),
        sa.Column("response_ms", sa.Integer()),
        sa.Column("error", sa.Text()),
        sa.Column("delivered", sa.Boolean(), nullable=False),
        sa.Column("delivered_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_webhook_deliveries_job", "webhook_deliveries", ["job_id", "id"])
    with op.batch_alter_table("schedules") as batch:
        batch.add_column(sa.Column("webhook_url", sa.Text()))
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("webhook_secret", sa.String(100)))
        batch.add_column(sa.Column("webhook_secret_previous", sa.String(100)))
        batch.add_column(sa.Column("webhook_secret_rotated_at", UTCDateTime()))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("webhook_secret_rotated_at")
        batch.drop_column("webhook_secret_previous")
        batch.drop_column("webhook_secret")
    with op.batch_alter_table("schedules") as batch:
        batch.drop_column("webhook_url")
    op.drop_index("ix_webhook_deliveries_job", "webhook_deliveries")
    op.drop_table("webhook_deliveries")
