"""SQL tables. Alembic migrations in `backend/migrations` create them; never `create_all`."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Date, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from backend.db import UTCDateTime, utcnow
from backend.enums import JobStatus, Priority


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    """One job: the SQL mirror of an RQ job, sharing its id."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(32))
    priority: Mapped[str] = mapped_column(String(16), default=Priority.NORMAL.value)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    stage: Mapped[str | None] = mapped_column(String(200))
    params: Mapped[Any] = mapped_column(JSON, default=dict)
    result: Mapped[Any | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    traceback: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: Bumped by each requeue: writes about an earlier run (a lower epoch) never apply.
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    max_retries: Mapped[int] = mapped_column(Integer, default=0)
    timeout_s: Mapped[int | None] = mapped_column(Integer)
    next_retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    webhook_url: Mapped[str | None] = mapped_column(Text)
    webhook_delivered: Mapped[bool | None] = mapped_column()
    webhook_attempts: Mapped[int] = mapped_column(Integer, default=0)
    schedule_id: Mapped[str | None] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    idempotency_hash: Mapped[str | None] = mapped_column(String(64))
    idempotency_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    run_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    depends_on: Mapped[Any | None] = mapped_column(JSON(none_as_null=True))  # none: SQL NULL
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancelled_by: Mapped[str | None] = mapped_column(String(200))
    worker: Mapped[str | None] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    __table_args__ = (
        Index("ix_jobs_tenant_status_created", "tenant_id", "status", "created_at", "id"),
        Index("ix_jobs_status_priority_created", "status", "priority", "created_at"),
        Index("ix_jobs_created_id", "created_at", "id"),
        Index("ix_jobs_task_created", "task", "created_at", "id"),
        Index(
            "ux_jobs_tenant_idempotency_key", text("coalesce(tenant_id, '')"), "idempotency_key", unique=True
        ),
        # Ended jobs by finish time (the prune, the stats); the stats count per queue and tenant
        # from the index alone (migration 0010).
        Index(
            "ix_jobs_status_finished_queue",
            *("status", "finished_at", "queue", "tenant_id", "enqueued_at", "started_at"),
        ),
        Index("ix_jobs_schedule_created", "schedule_id", "created_at", "id"),
        # Each list filter, and a task's or a tenant's with a status, walks an index of its own
        # newest first, however rare its rows; so does a task's moving average (migration 0009).
        Index("ix_jobs_status_created", "status", "created_at", "id"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        # … and with the run's times after them, a task's average reads the index alone (0011).
        Index(
            "ix_jobs_task_status_created_run",
            *("task", "status", "created_at", "id", "started_at", "finished_at"),
        ),
        # The oldest queued job (health, metrics) is the first entry of its status.
        Index("ix_jobs_status_enqueued", "status", "enqueued_at"),
    )


class JobCountRow(Base):
    """How many jobs a tenant has in one queue and status, up to the last fold (`backend.counts`).

    Kept by the database, never written by hand: triggers on `jobs` append every change to
    `job_count_changes`, and a fold adds them in here.
    """

    __tablename__ = "job_counts"

    #: The tenant's id, or "" for jobs without a tenant.
    tenant_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    queue: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    jobs: Mapped[int] = mapped_column(BigInteger, default=0)


class JobCountChangeRow(Base):
    """One change to a count, appended by a trigger on `jobs`: +1 where a row now is, -1 where it was."""

    __tablename__ = "job_count_changes"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    tenant_key: Mapped[str] = mapped_column(String(64))
    queue: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    change: Mapped[int] = mapped_column(Integer)


class ScheduleRow(Base):
    """One schedule: run `task` with `params` whenever `cron` matches, in `timezone`."""

    __tablename__ = "schedules"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    task: Mapped[str] = mapped_column(String(200))
    params: Mapped[Any] = mapped_column(JSON, default=dict)
    priority: Mapped[str] = mapped_column(String(16), default=Priority.NORMAL.value)
    max_retries: Mapped[int] = mapped_column(Integer, default=0)
    cron: Mapped[str] = mapped_column(String(200))
    #: An IANA name: fire times are computed in this zone, whatever the host's TZ is.
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: The next firing; None while the schedule is disabled.
    next_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(200))
    #: Where the jobs it fires report their end.
    webhook_url: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_schedules_enabled_next_run", "enabled", "next_run_at"),
        Index("ix_schedules_created_id", "created_at", "id"),
    )


class TenantRow(Base):
    """One team sharing Lanes: it sees only its own jobs and schedules."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    plan: Mapped[str] = mapped_column(String(32), default="free")
    #: Per-tenant overrides of the plan's quotas (None: the plan's number).
    daily_quota: Mapped[int | None] = mapped_column(Integer)
    monthly_quota: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: Signs its webhooks (`whsec_…`, Standard Webhooks); made when first needed.
    webhook_secret: Mapped[str | None] = mapped_column(String(100))
    #: The secret before the last rotation: it still signs until the grace period ends.
    webhook_secret_previous: Mapped[str | None] = mapped_column(String(100))
    webhook_secret_rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ApiKeyRow(Base):
    """One API key: only a hash of its secret is kept; `prefix` is the part shown in lists."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), ForeignKey("tenants.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16), default="member")
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_api_keys_tenant", "tenant_id"),)


class UsageRow(Base):
    """Jobs a tenant has taken from its quota in one UTC day or month (`period` `day` or `month`)."""

    __tablename__ = "tenant_usage"

    tenant_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    period: Mapped[str] = mapped_column(String(8), primary_key=True)
    #: The first day of the period: the day itself, or the first of the month.
    starts_on: Mapped[date] = mapped_column(Date, primary_key=True)
    used: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class WebhookDeliveryRow(Base):
    """One attempt to deliver a job's webhook event: what was sent where, and what came back."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(64))
    #: The `webhook-id` header: the same on every attempt of one event.
    event_id: Mapped[str] = mapped_column(String(120))
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    response_ms: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    #: Whether this attempt delivered the event (a 2xx answer).
    delivered: Mapped[bool] = mapped_column(Boolean, default=False)
    #: When the attempt was made.
    delivered_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index("ix_webhook_deliveries_job", "job_id", "id"),)
