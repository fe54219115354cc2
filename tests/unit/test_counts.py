"""Job counts the database keeps: they follow every write to a row, folded or not, on both databases."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from backend import counts
from backend.db import make_engine, make_sessionmaker
from backend.migrate import downgrade, upgrade
from backend.models import JobCountChangeRow, JobRow
from tests.helpers import job_row

NOW = datetime(2026, 12, 11, 12, 0, tzinfo=UTC)


def add_rows(session: Session, *specs: tuple[str | None, str, str]) -> list[str]:
    """A row per (tenant, queue, status), committed; their ids."""
    ids = []
    for n, (tenant, queue, status) in enumerate(specs):
        row = job_row(tenant_id=tenant, queue=queue, status=status, created_at=NOW + timedelta(seconds=n))
        session.add(row)
        ids.append(row.id)
    session.commit()
    return ids


def counted(session: Session, tenant_id: str | None = None) -> Counter[tuple[str, str]]:
    return Counter({(queue, status): n for queue, status, n in counts.counts(session, tenant_id=tenant_id)})


def truth(session: Session, tenant_id: str | None = None) -> Counter[tuple[str, str]]:
    """What counting the rows says."""
    query = select(JobRow.queue, JobRow.status, func.count()).group_by(JobRow.queue, JobRow.status)
    if tenant_id is not None:
        query = query.where(JobRow.tenant_id == tenant_id)
    return Counter({(queue, status): n for queue, status, n in session.execute(query)})


def test_counts_follow_inserts_status_changes_moves_and_deletes_before_and_after_a_fold(
    session: Session,
) -> None:
    first, second, third, _ = add_rows(
        session,
        ("t1", "normal", "queued"),
        ("t1", "normal", "queued"),
        ("t2", "high", "queued"),
        (None, "low", "failed"),
    )
    assert (
        counted(session)
        == truth(session)
        == Counter({("normal", "queued"): 2, ("high", "queued"): 1, ("low", "failed"): 1})
    )

    session.execute(update(JobRow).where(JobRow.id == first).values(status="started"))
    session.execute(update(JobRow).where(JobRow.id == first).values(progress=50, stage="half"))  # no change
    session.execute(update(JobRow).where(JobRow.id == second).values(tenant_id="t2", queue="high"))
    session.execute(update(JobRow).where(JobRow.status == "queued").values(status="cancelled"))
    session.commit()
    before_fold = counted(session)
    counts.fold(session)

    assert before_fold == counted(session) == truth(session)
    assert counted(session, "t2") == truth(session, "t2") == Counter({("high", "cancelled"): 2})
    assert counts.waiting(session) == 0

    session.execute(delete(JobRow).where(JobRow.id.in_([second, third])))
    session.commit()

    assert counted(session) == truth(session) == Counter({("normal", "started"): 1, ("low", "failed"): 1})
    assert counted(session, "t2") == Counter()


def test_a_progress_update_appends_no_change(session: Session) -> None:
    (job_id,) = add_rows(session, ("t1", "normal", "started"))
    counts.fold(session)

    session.execute(update(JobRow).where(JobRow.id == job_id).values(progress=70, status="started"))
    session.commit()

    assert counts.waiting(session) == 0


def test_a_read_folds_the_changes_once_enough_wait(session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(counts, "FOLD_AFTER", 3)
    add_rows(session, *[("t1", "normal", "queued")] * 3)
    assert counts.waiting(session) == 3

    assert counted(session) == Counter({("normal", "queued"): 3})
    assert counts.waiting(session) == 3  # not more than FOLD_AFTER: summed as they are

    add_rows(session, ("t1", "normal", "queued"))

    assert counted(session) == Counter({("normal", "queued"): 4})
    assert session.scalar(select(func.count()).select_from(JobCountChangeRow)) == 0


def test_the_api_stats_and_queue_counts_come_from_the_counts(api: Any) -> None:
    for priority in ("high", "low", "low"):
        assert api.post("/api/v1/jobs", json={"task": "demo.echo", "priority": priority}).status_code == 202

    stats = api.get("/api/v1/jobs/stats").json()
    queues = {q["name"]: q["sql"] for q in api.get("/api/v1/queues").json()["queues"]}

    assert stats["total"] == 3 and stats["by_status"]["queued"] == 3
    assert stats["queues"]["low"]["by_status"]["queued"] == 2
    assert queues["high"]["queued"] == 1 and queues["low"]["queued"] == 2 and queues["normal"]["queued"] == 0


def test_the_migration_counts_the_rows_already_there(database_url: str) -> None:
    downgrade(database_url, revision="0008", quiet=True)
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            for n, (tenant, status) in enumerate(
                [("t1", "queued"), ("t1", "succeeded"), (None, "succeeded")]
            ):
                conn.execute(
                    text(
                        "INSERT INTO jobs (id, tenant_id, task, queue, priority, status, progress, params,"
                        " attempts, epoch, max_retries, webhook_attempts, created_at, updated_at)"
                        " VALUES (:id, :tenant, 'demo.echo', 'normal', 'normal', :status, 0, '{}',"
                        " 0, 0, 0, 0, :at, :at)"
                    ),
                    {"id": f"job-{n}", "tenant": tenant, "status": status, "at": "2026-12-11 12:00:00"},
                )
        upgrade(database_url, quiet=True)
        with make_sessionmaker(engine)() as session:
            assert counted(session) == Counter({("normal", "queued"): 1, ("normal", "succeeded"): 2})
            assert counted(session, "t1") == Counter({("normal", "queued"): 1, ("normal", "succeeded"): 1})
    finally:
        engine.dispose()
        upgrade(database_url, quiet=True)
