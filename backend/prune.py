"""Retention: finished rows older than `LANES_RETENTION_DAYS` are deleted from SQL.

Only rows whose status is final (succeeded, failed, cancelled) and whose `finished_at` is before
the cutoff go, in batches found through the (status, finished_at) index, each committed on its
own so a large prune never holds one long transaction. An unfinished job is never touched, and
neither is a final row without `finished_at`. Redis keeps its own copy only for
`LANES_RESULT_TTL_S` / `LANES_FAILURE_TTL_S`, whatever SQL keeps.

The same retention applies to webhook delivery attempts (`webhook_deliveries`, by when they were
made) and to the daily quota counters (`tenant_usage` rows of a `day`); the monthly counters stay,
as a tenant's usage history.
"""

from __future__ import annotations

import argparse
import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.db import engine_for, make_sessionmaker, utcnow
from backend.enums import TERMINAL_STATUSES
from backend.logs import configure_logging
from backend.models import JobRow, UsageRow, WebhookDeliveryRow

log = logging.getLogger("backend.prune")  # also when run as __main__

BATCH_SIZE = 1000
_FINAL = sorted(status.value for status in TERMINAL_STATUSES)


def prune(
    *, session: Session, older_than_days: int, now: datetime | None = None, batch_size: int = BATCH_SIZE
) -> int:
    """Delete final rows that finished more than `older_than_days` before `now`; how many went."""
    if older_than_days < 0:
        raise ValueError("older_than_days must not be negative")
    cutoff = (now or utcnow()) - timedelta(days=older_than_days)
    old = (JobRow.status.in_(_FINAL), JobRow.finished_at < cutoff)
    deleted = 0
    while True:
        ids = list(session.scalars(select(JobRow.id).where(*old).limit(batch_size)))
        if not ids:
            break
        # The conditions again: a row requeued since the select is no longer final, and stays.
        result = session.execute(
            delete(JobRow).where(JobRow.id.in_(ids), *old).execution_options(synchronize_session=False)
        )
        session.commit()
        deleted += result.rowcount  # type: ignore[attr-defined]
    log.info("prune: deleted %d finished rows older than %s", deleted, cutoff.isoformat())
    deliveries = _delete_in_batches(
        session,
        WebhookDeliveryRow,
        WebhookDeliveryRow.id,
        (WebhookDeliveryRow.delivered_at < cutoff,),
        batch_size,
    )
    days = session.execute(
        delete(UsageRow)
        .where(UsageRow.period == "day", UsageRow.starts_on < cutoff.date())
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    log.info("prune: deleted %d webhook attempts and %d daily quota counters too", deliveries, days)
    return deleted


def _delete_in_batches(
    session: Session, model: Any, key: Any, where: tuple[Any, ...], batch_size: int
) -> int:
    deleted = 0
    while True:
        keys = list(session.scalars(select(key).where(*where).limit(batch_size)))
        if not keys:
            return deleted
        result = session.execute(
            delete(model).where(key.in_(keys)).execution_options(synchronize_session=False)
        )
        session.commit()
        deleted += result.rowcount  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    parser = argparse.ArgumentParser(
        prog="python -m backend.prune",
        description="Delete finished job rows older than the retention period.",
    )
    parser.add_argument(
        "--days",
        type=int,
        default=settings.retention_days,
        help=f"keep this many days (default: LANES_RETENTION_DAYS, {settings.retention_days})",
    )
    args = parser.parse_args(argv)
    if args.days < 0:
        parser.error("--days must not be negative")
    configure_logging(settings.log_level, json=settings.log_json)
    engine = engine_for(settings)
    try:
        with make_sessionmaker(engine)() as session:
            deleted = prune(session=session, older_than_days=args.days)
    finally:
        engine.dispose()
    print(f"pruned {deleted} finished job rows older than {args.days} days")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
