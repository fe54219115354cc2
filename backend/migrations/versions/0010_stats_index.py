"""stats: the index of ended jobs by finish time holds the queue and tenant too

`GET /api/v1/queues/stats` counts the jobs that ended in its window per queue, status and bucket
in SQL, and reads the wait and run times of the newest of them. With `queue`, `tenant_id`,
`enqueued_at` and `started_at` in the index after `(status, finished_at)`, both read the index
alone, never a row; the prune, which looks for ended rows by finish time, uses it as it used the
narrower index it replaces.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

from backend.migrations import online

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    online.create_index(
        "ix_jobs_status_finished_queue",
        "jobs",
        ["status", "finished_at", "queue", "tenant_id", "enqueued_at", "started_at"],
    )
    online.drop_index("ix_jobs_status_finished", "jobs")


def downgrade() -> None:
    online.create_index("ix_jobs_status_finished", "jobs", ["status", "finished_at"])
    online.drop_index("ix_jobs_status_finished_queue", "jobs")
