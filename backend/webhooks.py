"""Webhooks: a job submitted with `webhook_url` tells its owner when it ends. The emitting side.

When a job ends (`succeeded`; `failed` once its retries are spent; `cancelled`) and its row has a
`webhook_url`, `emit` puts one delivery on the `webhooks` queue: an RQ job of the internal task
`lanes.webhook` (`backend.webhook_delivery`), which workers run like any other but never mirror
as a job of its own. The event's body is fixed when it is emitted:

    {"id": "msg_<job>_<epoch>_<succeeded|failed|cancelled>", "event": "job.succeeded",
     "timestamp": "<when the job ended>", "data": {"job", "task", "status", "queue", "attempts",
     "result" or "error", "schedule_id", "created_at", "finished_at"}}

The `id` is the `webhook-id` header of every attempt, so a receiver can drop duplicates; a
requeued job's next end is a new event (its epoch is in the id). An event is emitted once: a Redis
`SET NX` on `lanes:webhook:emitted:<id>` decides between the worker that recorded the end and the
reconciler's sweep (`sweep`), which emits what a crash between the SQL commit and the emit left
behind. A redelivery asked for through the API sends the same event again under a new RQ job.

Signing follows Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature:
v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`), with the job's tenant's secret
(`whsec_…`), made when first needed and rotated on request; for `LANES_WEBHOOK_SECRET_GRACE_S`
after a rotation the old secret signs too (a second `v1,` signature), so receivers can switch.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from redis import Redis
from sqlalchemy import select
from sqlalchemy.orm import Session
from standardwebhooks import Webhook

from backend.config import Settings
from backend.db import utcnow
from backend.enums import DELIVERY_TASK, TERMINAL_STATUSES, WEBHOOK_QUEUE, JobStatus, WebhookEvent
from backend.errors import Conflict, InvalidInput
from backend.models import JobRow, TenantRow, WebhookDeliveryRow

log = logging.getLogger(__name__)

#: Set once an event is on the queue: a second emit of it does nothing.
EMITTED_KEY = "lanes:webhook:emitted:{event_id}"
EMITTED_TTL_S = 7 * 86_400
#: The sweep emits for jobs that ended at least this long ago (and at most `SWEEP_WINDOW`).
SWEEP_GRACE_S = 30.0
SWEEP_WINDOW = timedelta(days=1)
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24


def event_id(job_id: str, epoch: int, event: WebhookEvent) -> str:
    return f"msg_{job_id}_{epoch}_{event.value.removeprefix('job.')}"


def payload(row: JobRow, event: WebhookEvent) -> dict[str, Any]:
    """The event's body for the ended job `row`."""
    data: dict[str, Any] = {
        "job": row.id,
        "task": row.task,
        "status": row.status,
        "queue": row.queue,
        "attempts": row.attempts,
        "schedule_id": row.schedule_id,
        "created_at": _iso(row.created_at),
        "finished_at": _iso(row.finished_at),
    }
    if row.status == JobStatus.SUCCEEDED.value:
        data["result"] = row.result
    else:
        data["error"] = row.error
    return {
        "id": event_id(row.id, row.epoch, event),
        "event": event.value,
        "timestamp": _iso(row.finished_at or utcnow()),
        "data": data,
    }


def emit(
    *, session: Session, redis: Redis, settings: Settings, job_ids: Iterable[str], again: bool = False
) -> list[str]:
    """Put the end event of each ended job of `job_ids` that has a webhook on the `webhooks` queue.

    Each event goes once, unless `again` (a redelivery). Returns the event ids put on the queue.
    """
    ids = list(dict.fromkeys(job_ids))
    if not ids:
        return []
    rows = session.scalars(
        select(JobRow)
        .where(
            JobRow.id.in_(ids),
            JobRow.webhook_url.is_not(None),
            JobRow.status.in_([s.value for s in TERMINAL_STATUSES]),
        )
        # The caller may hold these rows from before its own UPDATE: read them as they are now.
        .execution_options(populate_existing=True)
    ).all()
    emitted = []
    for row in rows:
        event = WebhookEvent.for_status(JobStatus(row.status))
        body = payload(row, event)
        key = EMITTED_KEY.format(event_id=body["id"])
        if not redis.set(key, utcnow().isoformat(), nx=True, ex=EMITTED_TTL_S) and not again:
            continue
        delivery = {
            "event_id": body["id"],
            "event": event.value,
            "job_id": row.id,
            "epoch": row.epoch,
            "tenant_id": row.tenant_id,
            "url": row.webhook_url,
            "body": json.dumps(body, separators=(",", ":"), sort_keys=True),
        }
        try:
            tag = secrets.token_hex(4) if again else ""
            enqueue_attempt(redis, settings, delivery=delivery, attempt=1, delay_s=0.0, tag=tag)
        except Exception:
            with contextlib.suppress(Exception):
                redis.delete(key)  # not queued after all: leave the event to the next emit or sweep
            raise
        emitted.append(body["id"])
    return emitted


def emit_quietly(*, session: Session, redis: Redis, settings: Settings, job_ids: Iterable[str]) -> None:
    """`emit`, for callers whose own work is done: a failure is logged, and the sweep emits later."""
    try:
        emit(session=session, redis=redis, settings=settings, job_ids=job_ids)
    except Exception:
        session.rollback()
        log.warning("webhook events not emitted now; the reconciler's sweep will", exc_info=True)


def enqueue_attempt(
    redis: Redis, settings: Settings, *, delivery: dict[str, Any], attempt: int, delay_s: float, tag: str = ""
) -> None:
    """Queue attempt `attempt` of a delivery, now or after `delay_s` (RQ's scheduled registry)."""
    from backend.queues import queue_for  # the queues module resolves this module's task

    queue = queue_for(WEBHOOK_QUEUE, redis)
    suffix = f"-{tag}" if tag else ""
    options: dict[str, Any] = {
        "kwargs": {**delivery, "attempt": attempt, "tag": tag},
        "job_id": f"webhook-{delivery['event_id']}-{attempt}{suffix}",
        "job_timeout": int(settings.webhook_timeout_s) + 30,
        "result_ttl": settings.result_ttl_s,
        "failure_ttl": settings.failure_ttl_s,
        "description": f"{DELIVERY_TASK}({delivery['event']} of {delivery['job_id']}, attempt {attempt})",
    }
    if delay_s > 0:
        queue.enqueue_in(timedelta(seconds=delay_s), DELIVERY_TASK, **options)
    else:
        queue.enqueue(DELIVERY_TASK, **options)


def redeliver(*, session: Session, redis: Redis, settings: Settings, row: JobRow) -> str:
    """Send an ended job's event again (same `webhook-id`); `Conflict` if it has not ended."""
    if not row.webhook_url:
        raise InvalidInput(f"job {row.id} has no webhook_url", code="no_webhook")
    if JobStatus(row.status) not in TERMINAL_STATUSES:
        raise Conflict(
            {"message": f"job {row.id} has not ended: {row.status}", "status": row.status},
            code="job_not_finished",
        )
    emitted = emit(session=session, redis=redis, settings=settings, job_ids=[row.id], again=True)
    return emitted[0]


def sweep(*, session: Session, redis: Redis, settings: Settings, now: datetime | None = None) -> list[str]:
    """Emit the events of jobs that ended with a webhook but whose event was never emitted; their ids."""
    now = now or utcnow()
    ids = session.scalars(
        select(JobRow.id).where(
            JobRow.webhook_url.is_not(None),
            JobRow.webhook_delivered.is_(None),
            JobRow.webhook_attempts == 0,
            JobRow.status.in_([s.value for s in TERMINAL_STATUSES]),
            JobRow.finished_at <= now - timedelta(seconds=SWEEP_GRACE_S),
            JobRow.finished_at >= now - SWEEP_WINDOW,
        )
    ).all()
    return emit(session=session, redis=redis, settings=settings, job_ids=ids)


# -- secrets --------------------------------------------------------------------------------------


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_of(session: Session, tenant: TenantRow) -> str:
    """The tenant's signing secret, made (and committed) the first time it is asked for."""
    if tenant.webhook_secret is None:
        tenant.webhook_secret = new_secret()
        session.commit()
    return tenant.webhook_secret


def rotate_secret(*, session: Session, tenant: TenantRow, now: datetime | None = None) -> str:
    """A new secret for the tenant; the old one still signs for `LANES_WEBHOOK_SECRET_GRACE_S`."""
    tenant.webhook_secret_previous = tenant.webhook_secret
    tenant.webhook_secret = new_secret()
    tenant.webhook_secret_rotated_at = now or utcnow()
    session.commit()
    return tenant.webhook_secret


def signing_secrets(tenant: TenantRow, settings: Settings, now: datetime) -> list[str]:
    """The secrets that sign now: the current one, and the previous during its grace period."""
    found = [tenant.webhook_secret] if tenant.webhook_secret else []
    rotated = tenant.webhook_secret_rotated_at
    if (
        tenant.webhook_secret_previous
        and rotated is not None
        and now - rotated < timedelta(seconds=settings.webhook_secret_grace_s)
    ):
        found.append(tenant.webhook_secret_previous)
    return found


def signature(secrets_: list[str], *, msg_id: str, timestamp: datetime, body: str) -> str:
    """The `webhook-signature` header: one `v1,<base64>` per secret, space-separated."""
    return " ".join(
        Webhook(secret).sign(msg_id=msg_id, timestamp=timestamp, data=body) for secret in secrets_
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def deliveries(*, session: Session, job_id: str) -> list[WebhookDeliveryRow]:
    """Every attempt to deliver the job's events, oldest first."""
    query = (
        select(WebhookDeliveryRow).where(WebhookDeliveryRow.job_id == job_id).order_by(WebhookDeliveryRow.id)
    )
    return list(session.scalars(query))


def secret_view(*, session: Session, tenant: TenantRow, settings: Settings) -> dict[str, Any]:
    """The tenant's current secret, and until when the previous one also signs (if it still does)."""
    secret = secret_of(session, tenant)
    rotated = tenant.webhook_secret_rotated_at
    until = rotated + timedelta(seconds=settings.webhook_secret_grace_s) if rotated is not None else None
    return {
        "secret": secret,
        "previous_valid_until": until if until is not None and until > utcnow() else None,
    }
