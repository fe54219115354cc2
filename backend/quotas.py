"""Quotas: how many jobs a tenant may start per UTC day and per UTC month. No FastAPI in here.

A plan sets the numbers (`LANES_QUOTA_<PLAN>_DAILY` and `_MONTHLY`; `unlimited` has none), and a
tenant may have its own (`tenants.daily_quota`, `monthly_quota`, set with `python -m backend.admin
set-quota`). Each job put to work takes one credit from the day and one from the month: a submit,
each job of a batch, a schedule's firing (from the schedule's tenant), a schedule run by hand, and
a retry asked for by a person. A job's own retries under its retry policy take none.

The credits are counted in SQL, in `tenant_usage` (one row per tenant, period and period start),
inside the transaction that writes the job rows, with one `INSERT … ON CONFLICT DO UPDATE SET used
= used + n WHERE used + n <= limit` of the day's and the month's rows. The rows are locked from
that statement to the commit (PostgreSQL's row locks, SQLite's write lock), so of two submits
racing for the last credit one takes it and the other finds none. A submit refused for any
reason rolls the credit back with everything else, and a submit whose jobs Redis refuses gives its
credits back (`give_back`).
A new UTC day or month is a new row: the counters reset by themselves, and the old rows are the
usage history. Tenants on `unlimited` are counted too, with no limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Date, String, bindparam, select, text, update
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.db import UTCDateTime
from backend.enums import Plan
from backend.errors import QuotaExceeded
from backend.models import TenantRow, UsageRow

#: Stands for "no limit" in SQL: more jobs than a period can hold.
NO_LIMIT = 2**31 - 1


class Period(StrEnum):
    """A quota's period; each resets at the start of the next UTC day or month."""

    DAY = "day"
    MONTH = "month"

    def start(self, now: datetime) -> date:
        today = now.astimezone(UTC).date()
        return today if self is Period.DAY else today.replace(day=1)

    def resets_at(self, now: datetime) -> datetime:
        start = self.start(now)
        if self is Period.DAY:
            following = start + timedelta(days=1)
        else:
            following = (start + timedelta(days=32)).replace(day=1)
        return datetime.combine(following, time(), tzinfo=UTC)

    @property
    def adjective(self) -> str:
        return "daily" if self is Period.DAY else "monthly"


@dataclass(frozen=True)
class Limits:
    """A tenant's quotas; None is no limit."""

    day: int | None
    month: int | None

    def of(self, period: Period) -> int | None:
        return self.day if period is Period.DAY else self.month


def limits_for(tenant: TenantRow, settings: Settings) -> Limits:
    """The tenant's own quotas where it has them, else its plan's."""
    plan = Plan(tenant.plan)
    day: int | None = None
    month: int | None = None
    if plan is not Plan.UNLIMITED:
        day = getattr(settings, f"quota_{plan.value}_daily")
        month = getattr(settings, f"quota_{plan.value}_monthly")
    return Limits(
        day=tenant.daily_quota if tenant.daily_quota is not None else day,
        month=tenant.monthly_quota if tenant.monthly_quota is not None else month,
    )


@dataclass(frozen=True)
class Charge:
    """Credits taken from a tenant in one transaction: what `give_back` returns."""

    tenant_id: str
    jobs: int
    starts: tuple[tuple[Period, date], ...]


def take(
    *, session: Session, settings: Settings, tenant_id: str | None, jobs: int, now: datetime
) -> Charge | None:
    """Take `jobs` credits from the tenant's day and month, in the session's transaction.

    Raises `QuotaExceeded` (with the tenant's `credits`) if either has not room for all of them;
    the session's transaction is then rolled back, the caller's other writes with it. None for a
    job without a tenant. The caller commits.
    """
    tenant = session.get(TenantRow, tenant_id) if tenant_id is not None else None
    if tenant is None:
        return None
    limits = limits_for(tenant, settings)
    refused = _take(session, tenant.id, limits, jobs, now)
    if refused is not None:
        session.rollback()
        raise _exceeded(session, tenant, settings, now, jobs, refused)
    return Charge(tenant.id, jobs, tuple((period, period.start(now)) for period in Period))


def take_up_to(*, session: Session, settings: Settings, tenant_id: str, jobs: int, now: datetime) -> int:
    """Take as many of `jobs` credits as the tenant has room for, in the session's transaction; how many."""
    tenant = session.get(TenantRow, tenant_id)
    if tenant is None:
        return jobs
    limits = limits_for(tenant, settings)
    if _take(session, tenant.id, limits, jobs, now) is None:
        return jobs
    taken = 0
    while taken < jobs and _take(session, tenant.id, limits, 1, now) is None:
        taken += 1
    return taken


def give_back(*, session: Session, charge: Charge | None) -> None:
    """Return the credits of a charge whose jobs never reached a queue; the caller commits."""
    if charge is None:
        return
    for period, starts_on in charge.starts:
        session.execute(
            update(UsageRow)
            .where(
                UsageRow.tenant_id == charge.tenant_id,
                UsageRow.period == period.value,
                UsageRow.starts_on == starts_on,
                UsageRow.used >= charge.jobs,
            )
            .values(used=UsageRow.used - charge.jobs)
            .execution_options(synchronize_session=False)
        )


def credits(*, session: Session, tenant: TenantRow, settings: Settings, now: datetime) -> dict[str, Any]:
    """What the tenant has left: per period its limit, used, remaining (None: no limit) and resets_at."""
    limits = limits_for(tenant, settings)
    used = dict(
        session.execute(
            select(UsageRow.period, UsageRow.used).where(
                UsageRow.tenant_id == tenant.id,
                ((UsageRow.period == Period.DAY.value) & (UsageRow.starts_on == Period.DAY.start(now)))
                | ((UsageRow.period == Period.MONTH.value) & (UsageRow.starts_on == Period.MONTH.start(now))),
            )
        ).all()
    )
    report: dict[str, Any] = {"tenant": tenant.name, "plan": tenant.plan}
    for period in Period:
        limit = limits.of(period)
        taken = used.get(period.value, 0)
        report[period.adjective] = {
            "limit": limit,
            "used": taken,
            "remaining": None if limit is None else max(0, limit - taken),
            "resets_at": period.resets_at(now),
        }
    return report


def _take(session: Session, tenant_id: str, limits: Limits, jobs: int, now: datetime) -> Period | None:
    """Add `jobs` to the day's and the month's rows (made if missing), each only if it stays within
    its limit, in one statement; the period that refused, if any.

    A period that took its share while the other refused gives it back (same transaction).
    """
    for period in Period:
        limit = limits.of(period)
        if limit is not None and jobs > limit:
            return period  # a new period's row would be inserted past its limit
    values = {
        "tenant_id": tenant_id,
        "day_start": Period.DAY.start(now),
        "month_start": Period.MONTH.start(now),
        "jobs": jobs,
        "now": now,
        "day_limit": NO_LIMIT if limits.day is None else limits.day,
        "month_limit": NO_LIMIT if limits.month is None else limits.month,
    }
    took = {Period(period) for period in session.scalars(_TAKE_STATEMENT, values)}
    if len(took) == len(Period):
        return None
    for period in took:
        session.execute(
            update(UsageRow)
            .where(
                UsageRow.tenant_id == tenant_id,
                UsageRow.period == period.value,
                UsageRow.starts_on == period.start(now),
            )
            .values(used=UsageRow.used - jobs)
            .execution_options(synchronize_session=False)
        )
    return next(period for period in Period if period not in took)


#: The day's and the month's upsert in one statement, the same SQL on SQLite and PostgreSQL. Written
#: as text because SQLAlchemy does not cache a multi-row INSERT expression: built as one, it was
#: compiled again at every submit (about a tenth of an in-process submit's time).
_TAKE_STATEMENT = (
    text(
        "INSERT INTO tenant_usage (tenant_id, period, starts_on, used, updated_at) VALUES"
        f" (:tenant_id, '{Period.DAY.value}', :day_start, :jobs, :now),"
        f" (:tenant_id, '{Period.MONTH.value}', :month_start, :jobs, :now)"
        " ON CONFLICT (tenant_id, period, starts_on) DO UPDATE"
        " SET used = tenant_usage.used + excluded.used, updated_at = excluded.updated_at"
        " WHERE tenant_usage.used + excluded.used"
        f" <= CASE WHEN excluded.period = '{Period.DAY.value}' THEN :day_limit ELSE :month_limit END"
        " RETURNING period"
    )
    .bindparams(
        bindparam("day_start", type_=Date()),
        bindparam("month_start", type_=Date()),
        bindparam("now", type_=UTCDateTime()),
    )
    .columns(period=String)
)


def _exceeded(
    session: Session, tenant: TenantRow, settings: Settings, now: datetime, jobs: int, period: Period
) -> QuotaExceeded:
    report = credits(session=session, tenant=tenant, settings=settings, now=now)
    state = report[period.adjective]
    resets_at: datetime = state["resets_at"]
    wanted = "1 job" if jobs == 1 else f"{jobs} jobs"
    detail = (
        f"tenant {tenant.name!r} is over its {period.adjective} quota: {wanted} asked for, "
        f"{state['remaining']} of {state['limit']} left until {resets_at.isoformat()}"
    )
    return QuotaExceeded(
        detail, credits=report, retry_after_s=max(1, math.ceil((resets_at - now).total_seconds()))
    )
