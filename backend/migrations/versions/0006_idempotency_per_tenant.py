"""idempotency keys per tenant: two tenants may use the same Idempotency-Key

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ux_jobs_idempotency_key", "jobs")
    # coalesce: a key is unique among jobs without a tenant too (NULLs would never clash).
    op.create_index(
        "ux_jobs_tenant_idempotency_key",
        "jobs",
        [sa.text("coalesce(tenant_id, '')"), "idempotency_key"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("ux_jobs_tenant_idempotency_key", "jobs")
    op.create_index("ux_jobs_idempotency_key", "jobs", ["idempotency_key"], unique=True)
