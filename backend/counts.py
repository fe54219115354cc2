"""Jobs counted by tenant, queue and status without counting rows, however many there are.

The database keeps the counts (migration 0009). Triggers on `jobs` append a change to
`job_count_changes` for every row inserted, deleted, or moved to another status, queue or
tenant: +1 where the row now is, -1 where it was. Whoever writes a row (the API, a worker's
mirror, the scheduler, the reconciler, the prune, a hand-written UPDATE) is counted, in its own
transaction, and writers only ever append: no two of them wait on one counter row, and none can
deadlock on them. `fold()` moves the changes into `job_counts` (a row per tenant, queue and
status). A read adds `job_counts` and the changes not yet folded in one statement, so it sees one
instant and costs what the number of (tenant, queue, status) rows costs, not what the jobs do.

Reads fold first when more than `FOLD_AFTER` changes wait, and the scheduler's housekeeping folds
every `FOLD_INTERVAL_S`, so the changes never pile up.
"""

from __future__ import annotations

from sqlalchemy import delete, func, select, union_all
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from backend.models import JobCountChangeRow, JobCountRow

#: Changes waiting to be folded that make a read fold them first.
FOLD_AFTER = 2_000
#: How often the scheduler's housekeeping folds the changes.
FOLD_INTERVAL_S = 10.0
#: `tenant_key` of jobs without a tenant (a primary key column cannot hold NULL).
NO_TENANT = ""


def counts(session: Session, *, tenant_id: str | None) -> list[tuple[str, str, int]]:
    """(queue, status, jobs) of `tenant_id`'s jobs, or of every tenant's (None); no zero counts."""
    if waiting(session) > FOLD_AFTER:
        fold(session)
    both = union_all(
        select(JobCountRow.tenant_key, JobCountRow.queue, JobCountRow.status, JobCountRow.jobs.label("n")),
        select(
            JobCountChangeRow.tenant_key,
            JobCountChangeRow.queue,
            JobCountChangeRow.status,
            JobCountChangeRow.change.label("n"),
        ),
    ).subquery()
    total = func.sum(both.c.n)
    query = (
        select(both.c.queue, both.c.status, total).group_by(both.c.queue, both.c.status).having(total != 0)
    )
    if tenant_id is not None:
        query = query.where(both.c.tenant_key == tenant_id)
    return [(str(row[0]), str(row[1]), int(row[2])) for row in session.execute(query)]


def waiting(session: Session) -> int:
    """About how many changes wait to be folded (the span of their ids: two index look-ups)."""
    low, high = session.execute(select(func.min(JobCountChangeRow.id), func.max(JobCountChangeRow.id))).one()
    return 0 if low is None else int(high) - int(low) + 1


def fold(session: Session) -> None:
    """Move the waiting changes into `job_counts`, and commit.

    PostgreSQL: one statement deletes the changes it can see and adds them up, so a change
    committed meanwhile is left for the next fold, never lost or counted twice; two folds at once
    fold disjoint changes. SQLite: the fold holds the write lock, so nothing is added meanwhile.
    """
    if session.get_bind().dialect.name == "postgresql":
        moved = (
            delete(JobCountChangeRow)
            .returning(
                JobCountChangeRow.tenant_key,
                JobCountChangeRow.queue,
                JobCountChangeRow.status,
                JobCountChangeRow.change,
            )
            .cte("moved")
        )
        summed = (
            select(moved.c.tenant_key, moved.c.queue, moved.c.status, func.sum(moved.c.change))
            .group_by(moved.c.tenant_key, moved.c.queue, moved.c.status)
            .order_by(moved.c.tenant_key, moved.c.queue, moved.c.status)  # counter rows locked in one order
        )
        statement = pg_insert(JobCountRow).from_select(["tenant_key", "queue", "status", "jobs"], summed)
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["tenant_key", "queue", "status"],
                set_={"jobs": JobCountRow.jobs + statement.excluded.jobs},
            )
        )
        session.commit()
        return
    last = session.scalar(select(func.max(JobCountChangeRow.id)))
    if last is None:
        session.commit()
        return
    upto = JobCountChangeRow.id <= last
    summed = (
        select(
            JobCountChangeRow.tenant_key,
            JobCountChangeRow.queue,
            JobCountChangeRow.status,
            func.sum(JobCountChangeRow.change),
        )
        .where(upto)
        .group_by(JobCountChangeRow.tenant_key, JobCountChangeRow.queue, JobCountChangeRow.status)
    )
    into = sqlite_insert(JobCountRow).from_select(["tenant_key", "queue", "status", "jobs"], summed)
    session.execute(
        into.on_conflict_do_update(
            index_elements=["tenant_key", "queue", "status"],
            set_={"jobs": JobCountRow.jobs + into.excluded.jobs},
        )
    )
    session.execute(delete(JobCountChangeRow).where(upto))
    session.commit()
