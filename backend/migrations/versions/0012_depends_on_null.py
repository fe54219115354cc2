"""jobs.depends_on: no dependencies is SQL NULL, not JSON `null`

Until now a job without dependencies stored the JSON value `null`, so `depends_on IS NULL` found
none of them and the reconciler's look for stranded dependents (`depends_on IS NOT NULL` among
the `scheduled` rows) read every delayed job as well. The model now writes SQL NULL. Here the
waiting rows are mended, found through the status index; the ended ones keep their JSON `null`,
because rewriting every row of a large table would hold up the workers' writes for the length of
the upgrade. They go with pruning.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

WAITING = ("queued", "scheduled", "retrying", "started")


def upgrade() -> None:
    statuses = ", ".join(f"'{status}'" for status in WAITING)
    op.execute(
        "UPDATE jobs SET depends_on = NULL"
        f" WHERE status IN ({statuses}) AND CAST(depends_on AS TEXT) = 'null'"
    )


def downgrade() -> None:
    pass  # SQL NULL reads as no dependencies in the older code too
