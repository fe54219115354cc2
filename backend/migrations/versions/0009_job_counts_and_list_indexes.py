"""scale: job counts kept by triggers, and an index for each job list filter

`job_counts` holds how many jobs each tenant has per queue and status; triggers on `jobs` append
every change to `job_count_changes`, and `backend.counts` folds those in, so the stats, the queue
counts and /metrics never count rows. The list gets an index newest first per status, per tenant
and per task and status (which a task's moving average uses too), the tenant's and the task's
indexes end in `id` like the list's order, and the oldest queued job is found by status and
enqueue time.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-11
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

KEY = "coalesce({row}.tenant_id, ''), {row}.queue, {row}.status"

#: Indexes that gain `id` as their last column (name -> the columns before it).
REBUILT = {
    "ix_jobs_tenant_status_created": ["tenant_id", "status", "created_at"],
    "ix_jobs_task_created": ["task", "created_at"],
}
NEW_INDEXES = {
    "ix_jobs_status_created": ["status", "created_at", "id"],
    "ix_jobs_tenant_created": ["tenant_id", "created_at", "id"],
    "ix_jobs_task_status_created": ["task", "status", "created_at", "id"],
    "ix_jobs_status_enqueued": ["status", "enqueued_at"],
}

SQLITE_TRIGGERS = [
    f"""
    CREATE TRIGGER jobs_counted_insert AFTER INSERT ON jobs
    BEGIN
        INSERT INTO job_count_changes (tenant_key, queue, status, change)
        VALUES ({KEY.format(row="NEW")}, 1);
    END
    """,
    f"""
    CREATE TRIGGER jobs_counted_update AFTER UPDATE OF tenant_id, queue, status ON jobs
    WHEN OLD.tenant_id IS NOT NEW.tenant_id OR OLD.queue IS NOT NEW.queue OR OLD.status IS NOT NEW.status
    BEGIN
        INSERT INTO job_count_changes (tenant_key, queue, status, change)
        VALUES ({KEY.format(row="OLD")}, -1), ({KEY.format(row="NEW")}, 1);
    END
    """,
    f"""
    CREATE TRIGGER jobs_counted_delete AFTER DELETE ON jobs
    BEGIN
        INSERT INTO job_count_changes (tenant_key, queue, status, change)
        VALUES ({KEY.format(row="OLD")}, -1);
    END
    """,
]

# PostgreSQL: inserts and deletes are counted per statement (a COPY, a batch submit or a prune
# batch appends one change per tenant, queue and status, not one per row); a status change per
# row, and only when the status, queue or tenant changed (a progress update costs nothing).
POSTGRES_TRIGGERS = [
    """
    CREATE FUNCTION jobs_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO job_count_changes (tenant_key, queue, status, change)
        SELECT coalesce(tenant_id, ''), queue, status, count(*) FROM inserted GROUP BY 1, 2, 3;
        RETURN NULL;
    END $$
    """,
    """
    CREATE FUNCTION jobs_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO job_count_changes (tenant_key, queue, status, change)
        SELECT coalesce(tenant_id, ''), queue, status, -count(*) FROM deleted GROUP BY 1, 2, 3;
        RETURN NULL;
    END $$
    """,
    f"""
    CREATE FUNCTION jobs_count_moved() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO job_count_changes (tenant_key, queue, status, change)
        VALUES ({KEY.format(row="OLD")}, -1), ({KEY.format(row="NEW")}, 1);
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER jobs_counted_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_inserted()
    """,
    """
    CREATE TRIGGER jobs_counted_delete AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_deleted()
    """,
    """
    CREATE TRIGGER jobs_counted_update AFTER UPDATE OF tenant_id, queue, status ON jobs FOR EACH ROW
    WHEN (OLD.tenant_id IS DISTINCT FROM NEW.tenant_id OR OLD.queue IS DISTINCT FROM NEW.queue
          OR OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION jobs_count_moved()
    """,
]


def upgrade() -> None:
    op.create_table(
        "job_counts",
        sa.Column("tenant_key", sa.String(64), primary_key=True),
        sa.Column("queue", sa.String(32), primary_key=True),
        sa.Column("status", sa.String(16), primary_key=True),
        sa.Column("jobs", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "job_count_changes",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("tenant_key", sa.String(64), nullable=False),
        sa.Column("queue", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("change", sa.Integer(), nullable=False),
    )
    # The triggers first: on PostgreSQL creating them locks `jobs` against writes until this
    # migration commits, so no row is missed or counted twice by the count below.
    for statement in POSTGRES_TRIGGERS if op.get_bind().dialect.name == "postgresql" else SQLITE_TRIGGERS:
        op.execute(statement)
    op.execute(
        "INSERT INTO job_counts (tenant_key, queue, status, jobs) "
        "SELECT coalesce(tenant_id, ''), queue, status, count(*) FROM jobs GROUP BY 1, 2, 3"
    )
    # `id` ends every list index: the list is ordered by (created_at, id), and without it SQLite
    # (no statistics) prefers any index that gives the whole order over a narrower one.
    for name, columns in REBUILT.items():
        op.drop_index(name, "jobs")
        op.create_index(name, "jobs", [*columns, "id"])
    for name, columns in NEW_INDEXES.items():
        op.create_index(name, "jobs", columns)


def downgrade() -> None:
    for name in NEW_INDEXES:
        op.drop_index(name, "jobs")
    for name, columns in REBUILT.items():
        op.drop_index(name, "jobs")
        op.create_index(name, "jobs", columns)
    for name in ("jobs_counted_insert", "jobs_counted_update", "jobs_counted_delete"):
        op.execute(
            f"DROP TRIGGER IF EXISTS {name} ON jobs"
            if op.get_bind().dialect.name == "postgresql"
            else f"DROP TRIGGER IF EXISTS {name}"
        )
    if op.get_bind().dialect.name == "postgresql":
        for function in ("jobs_count_inserted", "jobs_count_deleted", "jobs_count_moved"):
            op.execute(f"DROP FUNCTION IF EXISTS {function}()")
    op.drop_table("job_count_changes")
    op.drop_table("job_counts")
