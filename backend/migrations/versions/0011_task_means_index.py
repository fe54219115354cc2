"""averages: a task's succeeded runs read from its index alone

A waiting job's estimate averages the run time (`finished_at - started_at`) of its task's newest
succeeded rows, a walk of `(task, status, created_at, id)` newest first. With `started_at` and
`finished_at` at the end of that index, the walk reads no row: at 1,000,000 rows the averages of
12 tasks took 11.5 ms on SQLite and 15 on PostgreSQL, one row fetch per sample. Both columns
change only with the status, which is in the key, so the index is written no more often.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

from backend.migrations import online

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    online.create_index(
        "ix_jobs_task_status_created_run",
        "jobs",
        ["task", "status", "created_at", "id", "started_at", "finished_at"],
    )
    online.drop_index("ix_jobs_task_status_created", "jobs")


def downgrade() -> None:
    online.create_index("ix_jobs_task_status_created", "jobs", ["task", "status", "created_at", "id"])
    online.drop_index("ix_jobs_task_status_created_run", "jobs")
