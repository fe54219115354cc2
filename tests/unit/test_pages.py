"""Keyset pages of the job list: every filter walks newest first, without gaps or repeats, even
through many rows of the same instant."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from backend import jobs
from backend.enums import JobStatus, Priority
from backend.models import JobRow

NOW = datetime(2026, 12, 11, 12, 0, tzinfo=UTC)
STATUSES = [JobStatus.QUEUED, JobStatus.SUCCEEDED, JobStatus.FAILED]
TASKS = ["demo.echo", "demo.sleep"]
TENANTS = [None, "t1", "t2"]


def add_rows(session: Session, count: int) -> list[JobRow]:
    """`count` rows, three at each instant, with statuses, tasks, priorities and tenants mixed."""
    rows = []
    for n in range(count):
        created = NOW - timedelta(seconds=n // 3)
        priority = list(Priority)[n % 3]
        rows.append(
            JobRow(
                id=uuid.uuid4().hex,
                tenant_id=TENANTS[n % 3 if n % 2 else 1],
                task=TASKS[n % 2],
                queue=priority.value,
                priority=priority.value,
                status=STATUSES[n % 3 if n % 4 else 1].value,
                params={},
                created_at=created,
                updated_at=created,
            )
        )
    session.add_all(rows)
    session.commit()
    return rows


@pytest.mark.parametrize(
    ("filters", "tenant"),
    [
        (jobs.JobFilter(), None),
        (jobs.JobFilter(status=JobStatus.FAILED), None),
        (jobs.JobFilter(task="demo.sleep"), None),
        (jobs.JobFilter(priority=Priority.LOW), None),
        (jobs.JobFilter(), "t1"),
        (jobs.JobFilter(status=JobStatus.SUCCEEDED, task="demo.echo"), "t1"),
    ],
)
def test_each_filter_pages_newest_first_through_rows_of_one_instant(
    session: Session, filters: jobs.JobFilter, tenant: str | None
) -> None:
    rows = add_rows(session, 60)
    expected = [
        row.id
        for row in sorted(rows, key=lambda r: (r.created_at, r.id), reverse=True)
        if (tenant is None or row.tenant_id == tenant)
        and (filters.status is None or row.status == filters.status.value)
        and (filters.task is None or row.task == filters.task)
        and (filters.priority is None or row.priority == filters.priority.value)
    ]

    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = jobs.list_jobs(
            session=session, filters=filters, limit=2, cursor=cursor, tenant_id=tenant
        )
        seen += [row.id for row in page]
        if cursor is None:
            break

    assert expected and seen == expected
