"""Retention: finished rows older than the retention period are pruned, and nothing else."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend import tenants
from backend.db import utcnow
from backend.enums import JobStatus
from backend.jobs import new_job_id
from backend.models import JobRow, UsageRow, WebhookDeliveryRow
from backend.prune import prune
from tests.helpers import ROOT, lanes_env

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def add_row(
    session: Session,
    status: JobStatus,
    finished_days_ago: float | None,
    *,
    now: datetime = NOW,
    **values: Any,
) -> str:
    """A row created long ago that finished `finished_days_ago` before `now` (None: has not)."""
    created = now - timedelta(days=500)
    finished = None if finished_days_ago is None else now - timedelta(days=finished_days_ago)
    job_id = new_job_id()
    session.add(
        JobRow(
            id=job_id,
            task="demo.echo",
            queue="normal",
            priority="normal",
            status=status.value,
            params={},
            attempts=1,
            max_retries=3,
            created_at=created,
            enqueued_at=created,
            updated_at=finished or created,
            finished_at=finished,
            **values,
        )
    )
    session.commit()
    return job_id


def remaining(session: Session) -> set[str]:
    session.expire_all()
    return set(session.scalars(select(JobRow.id)))


def test_prune_deletes_only_final_rows_that_finished_before_the_retention_period(session: Session) -> None:
    old_final = {add_row(session, status, 31) for status in JobStatus if status.is_terminal}
    kept = {
        add_row(session, JobStatus.SUCCEEDED, 29),  # inside the retention period
        add_row(session, JobStatus.FAILED, 30),  # exactly at the cutoff: not older than it
        add_row(session, JobStatus.CANCELLED, None),  # final, but with no finished_at to go by
    }
    # Unfinished rows stay, however old, even with a finished_at left from an earlier run.
    kept |= {add_row(session, status, 90) for status in JobStatus if not status.is_terminal}
    kept.add(add_row(session, JobStatus.QUEUED, None))

    assert prune(session=session, older_than_days=30, now=NOW) == len(old_final) == 3

    assert remaining(session) == kept
    assert prune(session=session, older_than_days=30, now=NOW) == 0


def test_prune_works_through_many_rows_in_batches(session: Session) -> None:
    old = {add_row(session, JobStatus.SUCCEEDED, 40 + n) for n in range(7)}
    young = add_row(session, JobStatus.SUCCEEDED, 1)

    assert prune(session=session, older_than_days=30, now=NOW, batch_size=3) == len(old)

    assert remaining(session) == {young}


def test_make_prune_deletes_rows_past_lanes_retention_days(session: Session, database_url: str) -> None:
    old = add_row(session, JobStatus.FAILED, 400, now=utcnow())
    young = add_row(session, JobStatus.FAILED, 5, now=utcnow())
    env = lanes_env(redis_url="redis://127.0.0.1:1/0", database_url=database_url, retention_days=7)

    done = subprocess.run(
        [sys.executable, "-m", "backend.prune"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pruned 1 finished job rows older than 7 days"
    assert remaining(session) == {young} and old not in remaining(session)


def test_prune_also_drops_old_webhook_attempts_and_daily_quota_counters_but_keeps_the_months(
    session: Session,
) -> None:
    tenant = tenants.create_tenant(session=session, name="acme")
    for days_ago in (40, 2):
        when = NOW - timedelta(days=days_ago)
        session.add(
            WebhookDeliveryRow(
                job_id="j", event_id=f"msg_j_{days_ago}", event="job.succeeded", url="http://x/", attempt=1,
                delivered=True, delivered_at=when,
            )
        )  # fmt: skip
        for period in ("day", "month"):
            session.add(
                UsageRow(tenant_id=tenant.id, period=period, starts_on=when.date(), used=1, updated_at=when)
            )
    session.commit()

    prune(session=session, older_than_days=30, now=NOW)

    session.expire_all()
    assert [d.event_id for d in session.scalars(select(WebhookDeliveryRow))] == ["msg_j_2"]
    kept = sorted((u.period, (NOW.date() - u.starts_on).days) for u in session.scalars(select(UsageRow)))
    assert kept == [("day", 2), ("month", 2), ("month", 40)]
