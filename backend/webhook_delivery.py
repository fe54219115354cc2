"""Delivering webhook events: one attempt per RQ job on the `webhooks` queue, run by any worker.

`deliver(**delivery)` is the internal task `lanes.webhook` (`backend.webhooks.DELIVERY_TASK`):

1. The URL is checked again (`backend.webhook_urls.check_url`): a host must still resolve only to
   public addresses (or to `LANES_WEBHOOK_ALLOW`), and the request goes to the address that was
   checked, with the URL's host in `Host` and in TLS's SNI and certificate check, so a DNS answer
   that changes between check and connect cannot slip through.
2. The body is signed (Standard Webhooks) with the tenant's secret(s) at this attempt's time.
3. One POST, `LANES_WEBHOOK_TIMEOUT_S` for the whole exchange, redirects not followed.
4. The attempt is recorded in `webhook_deliveries`, and the job row's `webhook_attempts` and
   `webhook_delivered` follow (True on a 2xx, False once the event is given up).

A network error, a timeout, 429 or 5xx is retried up to `LANES_WEBHOOK_MAX_RETRIES` times, each
a new RQ job scheduled after `LANES_WEBHOOK_RETRY_BASE_S × 2^(n-1)` plus up to 25 % jitter, with
the same `webhook-id`. Any other answer (a 3xx, another 4xx) and a URL refused at send time end
the event at once. The task never raises for a failed delivery: its outcome is in SQL. An error
of its own (the database away while it records) fails its RQ job, which stays in RQ's failed
registry of `webhooks` and is not retried.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import httpx
from redis import Redis
from rq import get_current_job
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from backend import __version__, metrics, webhooks
from backend.config import Settings, get_settings
from backend.db import make_engine, make_sessionmaker, session_scope, utcnow
from backend.errors import InvalidInput
from backend.models import JobRow, TenantRow, WebhookDeliveryRow
from backend.webhook_urls import Allowance, Destination, check_url

log = logging.getLogger(__name__)

USER_AGENT = f"Lanes-Webhooks/{__version__}"
#: Answers that are worth another attempt.
RETRY_STATUSES = frozenset({408, 425, 429})
JITTER = 0.25


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to."""

    delivered: bool
    retry: bool
    status_code: int | None = None
    response_ms: int | None = None
    error: str | None = None


def deliver(**delivery: Any) -> dict[str, Any]:
    """Make one attempt; schedule the next if it failed in a way worth retrying. Never raises."""
    job = get_current_job()
    redis: Redis = job.connection if job is not None else Redis()
    settings = get_settings()
    return attempt(delivery, redis=redis, settings=settings, sessions=_sessions(settings.database_url))


def attempt(
    delivery: dict[str, Any], *, redis: Redis, settings: Settings, sessions: sessionmaker[Session]
) -> dict[str, Any]:
    """One attempt of `delivery` (the kwargs `webhooks.emit` queued), recorded; its outcome."""
    number = int(delivery["attempt"])
    with sessions() as session:
        tenant = session.get(TenantRow, delivery["tenant_id"]) if delivery.get("tenant_id") else None
        keys = webhooks.signing_secrets(tenant, settings, utcnow()) if tenant is not None else []
        if tenant is not None and not keys:
            keys = [webhooks.secret_of(session, tenant)]
    outcome = _send(delivery, settings, keys)
    final = outcome.delivered or not outcome.retry or number > settings.webhook_max_retries
    with session_scope(sessions) as session:
        _record(session, delivery, number, outcome, final)
    verdict = "delivered" if outcome.delivered else "given_up" if final else "retrying"
    metrics.count(redis, "lanes_webhook_deliveries", outcome=verdict)
    if not final:
        delay = settings.webhook_retry_base_s * 2 ** (number - 1) * (1 + random.uniform(0, JITTER))
        webhooks.enqueue_attempt(
            redis,
            settings,
            delivery={k: v for k, v in delivery.items() if k not in ("attempt", "tag")},
            attempt=number + 1,
            delay_s=delay,
            tag=delivery.get("tag", ""),
        )
    log.info(
        "webhook %s of job %s, attempt %d: %s",
        delivery["event"],
        delivery["job_id"],
        number,
        "delivered" if outcome.delivered else f"{outcome.error} ({'retrying' if not final else 'given up'})",
    )
    return {"delivered": outcome.delivered, "status_code": outcome.status_code, "error": outcome.error}


def _send(delivery: dict[str, Any], settings: Settings, keys: list[str]) -> Outcome:
    try:
        destination = check_url(delivery["url"], allow=Allowance.parse(settings.webhook_allow))
    except InvalidInput as exc:
        return Outcome(delivered=False, retry=False, error=str(exc.detail))
    if not keys:
        return Outcome(delivered=False, retry=False, error="no signing secret: the job has no tenant")
    sent_at = utcnow()
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": delivery["event_id"],
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": webhooks.signature(
            keys, msg_id=delivery["event_id"], timestamp=sent_at, body=delivery["body"]
        ),
    }
    started = time.monotonic()
    try:
        response = _post(destination, headers, delivery["body"], settings.webhook_timeout_s)
    except httpx.TimeoutException:
        return Outcome(
            delivered=False,
            retry=True,
            response_ms=_ms(started),
            error=f"timed out after {settings.webhook_timeout_s:g} s",
        )
    except httpx.HTTPError as exc:
        return Outcome(
            delivered=False, retry=True, response_ms=_ms(started), error=f"{type(exc).__name__}: {exc}"
        )
    code, elapsed = response.status_code, _ms(started)
    if 200 <= code < 300:
        return Outcome(delivered=True, retry=False, status_code=code, response_ms=elapsed)
    if 300 <= code < 400:
        where = response.headers.get("location", "")
        return Outcome(False, False, code, elapsed, f"redirect not followed: {code} to {where}"[:500])
    retry = code >= 500 or code in RETRY_STATUSES
    return Outcome(False, retry, code, elapsed, f"answered {code}")


def _post(destination: Destination, headers: dict[str, str], body: str, timeout_s: float) -> httpx.Response:
    """POST to the checked address itself; the URL's host goes in `Host` and in TLS's SNI."""
    address = destination.addresses[0]
    literal = f"[{address}]" if ":" in address else address
    default_port = 443 if destination.scheme == "https" else 80
    host = f"[{destination.host}]" if ":" in destination.host else destination.host
    headers = {**headers, "host": host if destination.port == default_port else f"{host}:{destination.port}"}
    url = f"{destination.scheme}://{literal}:{destination.port}{destination.target}"
    extensions = {"sni_hostname": destination.host} if destination.scheme == "https" else {}
    with httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False) as client:
        request = client.build_request(
            "POST", url, content=body.encode(), headers=headers, extensions=extensions
        )
        return client.send(request)


def _record(session: Session, delivery: dict[str, Any], number: int, outcome: Outcome, final: bool) -> None:
    session.add(
        WebhookDeliveryRow(
            job_id=delivery["job_id"],
            event_id=delivery["event_id"],
            event=delivery["event"],
            url=delivery["url"],
            attempt=number,
            status_code=outcome.status_code,
            response_ms=outcome.response_ms,
            error=outcome.error,
            delivered=outcome.delivered,
            delivered_at=utcnow(),
        )
    )
    values: dict[str, Any] = {"webhook_attempts": number}
    if final:
        values["webhook_delivered"] = outcome.delivered
    # A later run of the job (a requeue: another epoch) has its own event; leave its columns alone.
    session.execute(
        update(JobRow)
        .where(JobRow.id == delivery["job_id"], JobRow.epoch == int(delivery["epoch"]))
        .values(**values)
        .execution_options(synchronize_session=False)
    )


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


@lru_cache(maxsize=4)
def _sessions(database_url: str) -> sessionmaker[Session]:
    # One engine per process (a work-horse builds its own after the fork).
    return make_sessionmaker(make_engine(database_url))
