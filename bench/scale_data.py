"""The rows and Redis keys the scale benchmark measures against, made fast.

One *population* of N job rows is described, row k being the k-th oldest: a realistic mix of
statuses, queues, tasks and tenants, `created_at` spread evenly over four weeks up to now. Each
row is a pure function of (k, N), so SQLite and PostgreSQL get the very same rows. A run measures
growing subsets of it (10,000, then 100,000, then N): a shuffled order of k is cut into stages, so
each subset is a random sample of the whole, with the same time span and the same mix.

The mix: the newest `RECENT_SHARE` (20 %) of rows holds the work in flight. About half of those
wait (queued, scheduled for later, retrying; a few running), so 10 % of all rows are queued:
100,000 queued jobs at 1,000,000 rows. Every other row has ended: succeeded (92 %), failed after
its retries (5 %) or cancelled (3 %).

Writers: SQLite through `executemany` in one transaction, PostgreSQL through `COPY`, both straight
into the tables that `backend.migrate.upgrade` made. Redis: the queued rows' jobs through
`backend.enqueue.enqueue_rows` (RQ's own job hashes and queue lists, a pipeline per 1,000), and
the registries (`rq:wip`, `rq:scheduled`, `rq:finished`, `rq:failed`, `rq:canceled`) as the
sorted sets RQ keeps, one `ZADD` per key; and, as on a running platform, 8 idle workers registered
by RQ on every queue and one scheduler daemon's registration.
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import Any

from redis import Redis
from rq import Worker
from rq.serializers import JSONSerializer
from rq_scheduler import Scheduler
from sqlalchemy import Engine

from backend.config import Settings
from backend.enqueue import enqueue_rows
from backend.enums import WORKER_QUEUES, JobStatus
from backend.health import SCHEDULERS_KEY
from backend.models import JobRow, ScheduleRow, TenantRow

SEED = 20_261_211
SPAN = timedelta(days=28)
#: The newest share of rows, where the work in flight is.
RECENT_SHARE = 0.20
#: Of the recent rows, the share still waiting: 10.3 % of all rows, 97 % of them queued, so
#: 100,000 queued jobs at 1,000,000 rows.
RECENT_WAITING = 0.515
#: Rows that are running: one per worker of a small fleet.
RUNNING = 8
WORKERS = tuple(f"worker-{n}" for n in range(RUNNING))
ENQUEUE_CHUNK = 1_000
FLEET_TTL_S = 86_400  # the workers' and the scheduler's registrations outlive the run
INSERT_CHUNK = 20_000
SEED_CACHE_KIB = 512 * 1024  # SQLite's page cache while seeding: random ids touch pages all over

TASKS = {
    "reports.build": 30,
    "mail.send": 25,
    "images.resize": 15,
    "billing.invoice": 8,
    "exports.csv": 6,
    "search.index": 5,
    "webhooks.relay": 4,
    "etl.load": 3,
    "ml.score": 2,
    "audit.archive": 1,
    "cache.warm": 0.7,
    "legal.hold": 0.3,
}
COMMON_TASK, RARE_TASK = "reports.build", "legal.hold"
PRIORITIES = {"high": 15, "normal": 70, "low": 15}
#: Tenant name -> weight; None is a job with no tenant (fired for the platform itself).
TENANTS: dict[str | None, float] = {
    None: 5,
    "tenant-00": 35,
    "tenant-01": 15,
    "tenant-02": 10,
    **{f"tenant-{n:02d}": 35 / 17 for n in range(3, 20)},
}
BIG_TENANT, SMALL_TENANT = "tenant-00", "tenant-12"
ENDED = {JobStatus.SUCCEEDED: 92, JobStatus.FAILED: 5, JobStatus.CANCELLED: 3}
WAITING = {JobStatus.QUEUED: 97, JobStatus.SCHEDULED: 2, JobStatus.RETRYING: 1}
SCHEDULES = 50  # schedule rows; the first 20 have fired jobs
FIRING_SCHEDULES = 20
SCHEDULED_SHARE = 0.10  # rows a schedule fired
WEBHOOK_SHARE = 0.03
IDEMPOTENT_SHARE = 0.05
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/app/backend/tasks/__init__.py", line 88, in __call__\n'
    "    return to_jsonable_python(self.function(model))\n"
    '  File "/app/tasks/reports.py", line 41, in build\n'
    '    raise ValueError(f"no data for {params.day}")\n'
)


def tenant_id(name: str) -> str:
    return f"tid-{name}"


def schedule_id(n: int) -> str:
    return f"sched-{n:02d}"


class _Picker:
    """Weighted choices with the cumulative weights worked out once."""

    def __init__(self, weights: Mapping[Any, float]):
        self.values = list(weights)
        self.cumulative = list(accumulate(weights.values()))

    def __call__(self, rng: random.Random) -> Any:
        return rng.choices(self.values, cum_weights=self.cumulative)[0]


_task, _priority, _tenant = _Picker(TASKS), _Picker(PRIORITIES), _Picker(TENANTS)
_ended, _waiting = _Picker(ENDED), _Picker(WAITING)


def job_row(k: int, population: int, now: datetime) -> dict[str, Any]:
    """Row k (0 = oldest) of a population of `population` rows ending at `now`: column -> value."""
    rng = random.Random(SEED * 1_000_003 + k)
    created = now - SPAN + SPAN * ((k + rng.random()) / population)
    first_recent = int(population * (1 - RECENT_SHARE))
    recent = k >= first_recent
    if recent and k - first_recent < RUNNING * 2 and (k - first_recent) % 2 == 0:
        status = JobStatus.STARTED
    elif recent and rng.random() < RECENT_WAITING:
        status = _waiting(rng)
    else:
        status = _ended(rng)
    priority = _priority(rng)
    tenant = _tenant(rng)
    task = _task(rng)
    row: dict[str, Any] = {
        "id": f"{rng.getrandbits(128):032x}",
        "tenant_id": tenant_id(tenant) if tenant else None,
        "task": task,
        "queue": priority,
        "priority": priority,
        "status": status.value,
        "progress": 0,
        "stage": None,
        "params": {"day": (created.date() - timedelta(days=1)).isoformat(), "n": k % 997, "dry_run": False},
        "result": None,
        "error": None,
        "traceback": None,
        "attempts": 0,
        "epoch": 0,
        "max_retries": 3,
        "timeout_s": 180 if rng.random() < 0.3 else None,
        "next_retry_at": None,
        "webhook_url": "https://hooks.example.com/lanes" if rng.random() < WEBHOOK_SHARE else None,
        "webhook_delivered": None,
        "webhook_attempts": 0,
        "schedule_id": schedule_id(rng.randrange(FIRING_SCHEDULES))
        if rng.random() < SCHEDULED_SHARE
        else None,
        "idempotency_key": None,
        "idempotency_hash": None,
        "idempotency_expires_at": None,
        "run_at": None,
        "depends_on": None,
        "created_at": created,
        "enqueued_at": created,
        "started_at": None,
        "finished_at": None,
        "cancelled_at": None,
        "cancelled_by": None,
        "worker": None,
        "updated_at": created,
    }
    if rng.random() < IDEMPOTENT_SHARE:
        row["idempotency_key"] = f"order-{k}"
        row["idempotency_hash"] = f"{rng.getrandbits(256):064x}"
        row["idempotency_expires_at"] = created + timedelta(days=1)
    started = created + timedelta(seconds=rng.expovariate(1 / 5))
    finished = started + timedelta(seconds=rng.lognormvariate(0.5, 1.2))
    if status is JobStatus.STARTED:
        row.update(started_at=now - timedelta(seconds=rng.uniform(1, 30)), attempts=1, progress=40)
        row.update(stage="rendering", worker=WORKERS[(k - first_recent) // 2 % RUNNING])
    elif status is JobStatus.SCHEDULED:
        row.update(run_at=now + timedelta(seconds=rng.uniform(600, 3 * 86_400)), enqueued_at=None)
    elif status is JobStatus.RETRYING:
        attempts = rng.randint(1, 3)
        row.update(attempts=attempts, started_at=started, worker=rng.choice(WORKERS))
        row.update(error="TimeoutError: upstream did not answer", traceback=TRACEBACK)
        row.update(next_retry_at=now + timedelta(seconds=rng.uniform(5, 900)), updated_at=finished)
    elif status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        attempts = 1 if status is JobStatus.SUCCEEDED and rng.random() < 0.9 else rng.randint(2, 4)
        if status is JobStatus.FAILED:
            attempts = 4
            row.update(error=f"ValueError: no data for {row['params']['day']}", traceback=TRACEBACK)
        else:
            row.update(result={"ok": True, "rows": rng.randrange(10_000)}, progress=100, stage="done")
        row.update(attempts=attempts, started_at=started, finished_at=finished, worker=rng.choice(WORKERS))
        row.update(updated_at=finished)
        if row["webhook_url"]:
            row.update(webhook_delivered=True, webhook_attempts=1)
    elif status is JobStatus.CANCELLED:
        cancelled = created + timedelta(seconds=rng.uniform(1, 600))
        row.update(cancelled_at=cancelled, finished_at=cancelled, updated_at=cancelled)
        row.update(cancelled_by=f"api:{tenant or 'operator'}")
    return row


def stages(sizes: Sequence[int], now: datetime) -> Iterator[tuple[int, Iterator[list[dict[str, Any]]]]]:
    """(rows in all after this step, the step's new rows in chunks) for each size, smallest first.

    Each step adds a random sample of the rows not yet written, so every step holds the same mix
    over the same four weeks. A chunk's rows are made when it is asked for, so memory stays flat.
    """
    population = max(sizes)
    order = list(range(population))
    random.Random(SEED).shuffle(order)
    done = 0
    for size in sorted(sizes):
        ks = order[done:size]
        done = size
        chunks = (
            [job_row(k, population, now) for k in ks[i : i + INSERT_CHUNK]]
            for i in range(0, len(ks), INSERT_CHUNK)
        )
        yield size, chunks


#: What Redis needs to know of a row.
REDIS_FIELDS = (
    "id", "task", "queue", "params", "timeout_s", "max_retries", "webhook_url", "status",
    "created_at", "run_at", "next_retry_at", "finished_at",
)  # fmt: skip


def redis_view(row: dict[str, Any], *, now: datetime, settings: Settings) -> dict[str, Any] | None:
    """The fields of `row` that `fill_redis` reads, or None when RQ would hold nothing of it any
    more (a succeeded or cancelled job past its result TTL)."""
    if row["status"] in (JobStatus.SUCCEEDED.value, JobStatus.CANCELLED.value) and row[
        "finished_at"
    ] < now - timedelta(seconds=settings.result_ttl_s):
        return None
    return {name: row[name] for name in REDIS_FIELDS}


# -- SQL ---------------------------------------------------------------------------------------------

COLUMNS = [column.name for column in JobRow.__table__.columns]
JSON_COLUMNS = {"params", "result", "depends_on"}


def _sqlite_value(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in JSON_COLUMNS:
        return json.dumps(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, bool):
        return int(value)
    return value


def _pg_value(name: str, value: Any) -> Any:
    if value is not None and name in JSON_COLUMNS:
        return json.dumps(value)
    return value


def insert_rows(engine: Engine, rows: Iterable[dict[str, Any]]) -> None:
    """Append `rows` to `jobs`: `executemany` on SQLite, `COPY` on PostgreSQL, one transaction."""
    raw = engine.raw_connection()
    try:
        if engine.dialect.name == "sqlite":
            _insert_sqlite(raw.driver_connection, rows)  # type: ignore[arg-type]
        else:
            _copy_postgres(raw.driver_connection, rows)
        raw.commit()
    finally:
        raw.close()


def _insert_sqlite(conn: sqlite3.Connection, rows: Iterable[dict[str, Any]]) -> None:
    conn.execute(f"PRAGMA cache_size = -{SEED_CACHE_KIB}")  # this connection only: the app's are its own
    statement = f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    conn.executemany(statement, [tuple(_sqlite_value(c, row[c]) for c in COLUMNS) for row in rows])


def _copy_postgres(conn: Any, rows: Iterable[dict[str, Any]]) -> None:
    with conn.cursor() as cursor, cursor.copy(f"COPY jobs ({', '.join(COLUMNS)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([_pg_value(c, row[c]) for c in COLUMNS])


def tenant_and_schedule_rows(now: datetime) -> list[Any]:
    """The tenants the rows name, and the schedules (the first `FIRING_SCHEDULES` fired jobs)."""
    found: list[Any] = [
        TenantRow(id=tenant_id(name), name=name, plan="pro", created_at=now - SPAN)
        for name in TENANTS
        if name is not None
    ]
    for n in range(SCHEDULES):
        found.append(
            ScheduleRow(
                id=schedule_id(n),
                tenant_id=tenant_id(f"tenant-{n % 20:02d}"),
                name=f"nightly-{n:02d}",
                task=list(TASKS)[n % len(TASKS)],
                params={"n": n},
                priority="normal",
                max_retries=3,
                cron=f"{n % 60} * * * *",
                timezone="Europe/Paris" if n % 3 else "UTC",
                enabled=n % 10 != 9,
                next_run_at=now + timedelta(minutes=n % 60 + 1),
                created_at=now - SPAN + timedelta(minutes=n),
                updated_at=now - SPAN + timedelta(minutes=n),
            )
        )
    return found


# -- Redis -------------------------------------------------------------------------------------------


def fill_redis(redis: Redis, settings: Settings, rows: Sequence[dict[str, Any]], now: datetime) -> int:
    """Make Redis hold what `rows` say: queued jobs on their queues (oldest first), and RQ's registries.

    Flushes the database first. Returns how many jobs wait on the queues.
    """
    redis.flushdb()
    queued = sorted((r for r in rows if r["status"] == JobStatus.QUEUED.value), key=lambda r: r["created_at"])
    for start in range(0, len(queued), ENQUEUE_CHUNK):
        chunk = [_job_row(row) for row in queued[start : start + ENQUEUE_CHUNK]]
        enqueue_rows(redis=redis, settings=settings, rows=chunk, succeeded=None)
    registries: dict[str, dict[str, float]] = {}
    stamp = now.timestamp()
    for row in rows:
        status, queue = row["status"], row["queue"]
        if status == JobStatus.STARTED.value:
            # A deadline well ahead: RQ's cleanup (bare `count`) must not retry these meanwhile.
            registries.setdefault(f"rq:wip:{queue}", {})[f"{row['id']}:exec-1"] = stamp + 86_400
        elif status == JobStatus.SCHEDULED.value:
            registries.setdefault(f"rq:scheduled:{queue}", {})[row["id"]] = row["run_at"].timestamp()
        elif status == JobStatus.RETRYING.value:
            registries.setdefault(f"rq:scheduled:{queue}", {})[row["id"]] = row["next_retry_at"].timestamp()
        elif status == JobStatus.FAILED.value:
            expires = row["finished_at"].timestamp() + settings.failure_ttl_s
            registries.setdefault(f"rq:failed:{queue}", {})[row["id"]] = expires
        elif status in (JobStatus.SUCCEEDED.value, JobStatus.CANCELLED.value):
            expires = row["finished_at"].timestamp() + settings.result_ttl_s
            kind = "finished" if status == JobStatus.SUCCEEDED.value else "canceled"
            if expires > stamp:
                registries.setdefault(f"rq:{kind}:{queue}", {})[row["id"]] = expires
    with redis.pipeline(transaction=False) as pipe:
        for key, members in registries.items():
            items = list(members.items())
            for start in range(0, len(items), 10_000):
                pipe.zadd(key, dict(items[start : start + 10_000]))
        pipe.execute()
    register_fleet(redis, now)
    return len(queued)


def register_fleet(redis: Redis, now: datetime) -> None:
    """What a running platform also keeps in Redis: its workers' registrations (RQ's own, on every
    queue, idle) and a scheduler daemon's, as its heartbeat writes it; alive for `FLEET_TTL_S`."""
    for name in WORKERS:
        worker = Worker(list(WORKER_QUEUES), connection=redis, name=name, serializer=JSONSerializer)
        worker.register_birth()
        worker.heartbeat(timeout=FLEET_TTL_S)
    key = f"{Scheduler.redis_scheduler_namespace_prefix}bench"
    stamp = str(now.timestamp())
    with redis.pipeline() as pipe:
        pipe.hset(key, mapping={"birth": stamp, "heartbeat": stamp, "hostname": "bench", "pid": "1"})
        pipe.expire(key, FLEET_TTL_S)
        pipe.sadd(SCHEDULERS_KEY, key)
        pipe.execute()


def _job_row(row: dict[str, Any]) -> JobRow:
    """A transient JobRow carrying what `enqueue_rows` reads."""
    return JobRow(
        id=row["id"],
        task=row["task"],
        queue=row["queue"],
        params=row["params"],
        timeout_s=row["timeout_s"],
        max_retries=row["max_retries"],
        epoch=0,
        attempts=0,
        webhook_url=row["webhook_url"],
        run_at=None,
        depends_on=None,
    )
