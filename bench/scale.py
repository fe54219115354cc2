"""Scale: how fast the read endpoints answer with many job rows in SQL and many jobs in Redis.

A population of job rows (`bench.scale_data`: a realistic mix of statuses, queues, tasks, tenants
and schedules over four weeks) is written in growing steps, 10,000, 100,000 and then
`--scale-rows` (1,000,000), into a fresh SQLite file and a fresh PostgreSQL database made for the
run and dropped after it. At each step the queued rows' jobs (10 % of the rows: 100,000 at
1,000,000) are on the RQ queues of the run's private redis-server, and RQ's registries hold the
running, scheduled, finished, failed and cancelled jobs as RQ would.

Every read endpoint is then called in-process, through Starlette's `TestClient` on
`backend.main.create_app` (the app's lifespan, middleware, key check, handler and JSON; no socket
and no uvicorn, which add the same ~1 ms to every call and would share the 2 cores with the
client): the job list with no filter and with each filter it offers, a cursor half-way down the
list, one job, the stats, and everything the dashboard calls. The moving averages behind a
waiting job's estimate are kept for 5 s, as the platform keeps them; the reads marked
"(averages cold)" compute them afresh at every call, as a caller who asks less often than every
5 s meets them. Rate limits are off: their cost does not grow with
rows, and `submit` measures it.

SQL has no bare-RQ counterpart, so each endpoint's p95 is a row of Lanes' own, with the 50 ms
target as its floor (`TARGET_MS`, `Floor.limit`). Redis has one: Lanes' queue counts
(`observe.rq_counts`, and `GET /api/v1/queues` whole) are set beside bare RQ counting the same
things through its own API (`Queue.count` and each registry's `count`).
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import cycle
from typing import Any

from fastapi.testclient import TestClient
from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer
from sqlalchemy import Engine, select, text

from backend import observe, pages, tenants
from backend.config import Settings
from backend.db import make_engine, make_sessionmaker, utcnow
from backend.durations import default_stats
from backend.enums import JobStatus, Plan, Role
from backend.main import create_app
from backend.migrate import upgrade
from backend.models import JobRow
from bench import scale_data
from bench.env import BenchEnv, BenchError, postgres_database, say
from bench.report import Comparison, Floor

TARGET_MS = 50.0
#: Row counts measured below `--scale-rows`, so the growth shows.
STEPS = (10_000, 100_000)
#: Where the PostgreSQL database of the run is made (and dropped): the tests' server.
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MIN_SAMPLES = 10
FOOTNOTE = (
    "scale: p50 / p95 (ms) of each read, called in-process through TestClient as a platform admin "
    "(or a tenant's member where it says so), at each number of job rows; ! marks a p95 over the "
    "50 ms target. Rows and queued jobs are described in bench/README.md."
)
WARMUP_CALLS = 2
SAMPLE_IDS = 200


@dataclass(frozen=True)
class ScaleOptions:
    rows: int  # the largest step
    samples: int  # calls timed per endpoint (fewer when one takes long: see budget_s)
    budget_s: float  # time an endpoint may take before it stops at MIN_SAMPLES or more
    postgres_url: str | None  # server to make the PostgreSQL database on; None: SQLite only

    @property
    def sizes(self) -> tuple[int, ...]:
        return (*(s for s in STEPS if s < self.rows), self.rows)


@dataclass(frozen=True)
class Endpoint:
    """A read the benchmark times: its label and the paths it cycles through, called with `key`."""

    label: str
    paths: list[str]
    key: str = "admin"  # "admin": a platform admin; "member": a member of the big tenant
    ok: tuple[int, ...] = (200,)
    cold: bool = False  # the moving averages behind estimates computed afresh at every call


@dataclass
class Database:
    """One database of the run, its keys, and what the endpoints need to know of its rows."""

    name: str
    url: str
    engine: Engine
    keys: dict[str, str] = field(default_factory=dict)
    seconds_to_seed: float = 0.0


def run(env: BenchEnv, options: ScaleOptions) -> list[Comparison]:
    now = utcnow()
    rows: list[Comparison] = []
    redis = env.redis()
    settings = Settings.model_validate({"redis_url": env.redis_url, "database_url": env.database_url})
    with ExitStack() as stack:
        databases = [_database("sqlite", f"sqlite:///{env.directory / 'scale.db'}", settings)]
        if options.postgres_url:
            url = stack.enter_context(postgres_database(options.postgres_url))
            if url:
                databases.append(_database("postgresql", url, settings))
        for database in databases:
            stack.callback(database.engine.dispose)
        in_redis: list[dict[str, Any]] = []  # what Redis must hold of every row written so far
        probe = Probe()
        for size, chunks in scale_data.stages(options.sizes, now):
            seconds = dict.fromkeys((d.name for d in databases), 0.0)
            for chunk in chunks:
                for database in databases:
                    started = time.perf_counter()
                    scale_data.insert_rows(database.engine, chunk)
                    seconds[database.name] += time.perf_counter() - started
                probe.add(chunk)
                in_redis += filter(
                    None, (scale_data.redis_view(r, now=now, settings=settings) for r in chunk)
                )
            for database in databases:
                started = time.perf_counter()
                if database.name == "postgresql":
                    _vacuum_analyze(database.engine)
                seconds[database.name] += time.perf_counter() - started
                database.seconds_to_seed += seconds[database.name]
                say(f"{database.name}: {size:,} rows, this step written in {seconds[database.name]:.1f} s")
            started = time.perf_counter()
            queued = scale_data.fill_redis(redis, settings, in_redis, now)
            say(f"redis: {queued:,} jobs queued, registries filled in {time.perf_counter() - started:.1f} s")
            last = size == max(options.sizes)
            for database in databases:
                probe.cursors = _middle_cursors(database.engine)
                figures = measure(env, database, probe, options)
                rows += [_target_row(database, size, label, samples) for label, samples in figures.items()]
                if last:
                    rows.append(_versus_bare(database, queued, figures["GET /queues"], redis, options))
            if last:
                rows += _redis_counts(redis, queued, options)
    return rows


def _database(name: str, url: str, settings: Settings) -> Database:
    upgrade(url, quiet=True)
    engine = make_engine(url)
    database = Database(name=name, url=url, engine=engine)
    now = utcnow()
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        session.add_all(scale_data.tenant_and_schedule_rows(now))
        session.commit()
        operator = tenants.ensure_tenant(session=session, name=settings.operator_tenant, plan=Plan.UNLIMITED)
        database.keys["admin"] = tenants.create_key(session=session, tenant=operator, role=Role.ADMIN).secret
        big = tenants.get_tenant(session=session, name_or_id=scale_data.BIG_TENANT)
        database.keys["member"] = tenants.create_key(session=session, tenant=big, role=Role.MEMBER).secret
    return database


def _vacuum_analyze(engine: Engine) -> None:
    """What autovacuum does soon after a bulk load: fresh planner statistics and visibility map."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


# -- what the endpoints are called with -----------------------------------------------------------


@dataclass
class Probe:
    """Ids and cursors the endpoints are called with: every 100th succeeded job, every queued one."""

    ended_ids: list[str] = field(default_factory=list)
    queued_ids: list[str] = field(default_factory=list)
    cursors: dict[str, str] = field(default_factory=dict)

    def add(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if row["status"] == JobStatus.QUEUED.value:
                self.queued_ids.append(row["id"])
            elif row["status"] == JobStatus.SUCCEEDED.value and row["id"].endswith("00"):
                self.ended_ids.append(row["id"])

    def sample(self, ids: list[str]) -> list[str]:
        return random.Random(scale_data.SEED).sample(ids, min(SAMPLE_IDS, len(ids)))


def _middle_cursors(engine: Engine) -> dict[str, str]:
    """Cursors half-way down the list: of every job, of the succeeded ones and of the queued ones."""
    cursors = {}
    with make_sessionmaker(engine)() as session:
        for name, status in (("all", None), ("succeeded", JobStatus.SUCCEEDED), ("queued", JobStatus.QUEUED)):
            where = None if status is None else JobRow.status == status.value
            query = select(JobRow.created_at, JobRow.id)
            if where is not None:
                query = query.where(where)
            total = session.scalar(select(text("count(*)")).select_from(query.subquery())) or 0
            query = query.order_by(JobRow.created_at.desc(), JobRow.id.desc()).offset(total // 2).limit(1)
            row = session.execute(query).one()
            cursors[name] = pages.encode_cursor(row)
    return cursors


def endpoints(probe: Probe) -> list[Endpoint]:
    """Every read the API and the dashboard make, as `(label, paths)`."""
    big, small = scale_data.BIG_TENANT, scale_data.SMALL_TENANT
    common, rare = scale_data.COMMON_TASK, scale_data.RARE_TASK
    return [
        Endpoint("GET /jobs", ["/api/v1/jobs"]),
        Endpoint("GET /jobs (averages cold)", ["/api/v1/jobs"], cold=True),
        Endpoint("GET /jobs?limit=200", ["/api/v1/jobs?limit=200"]),
        Endpoint("GET /jobs?status=queued", ["/api/v1/jobs?status=queued"]),
        Endpoint("GET /jobs?status=started", ["/api/v1/jobs?status=started"]),
        Endpoint("GET /jobs?status=scheduled", ["/api/v1/jobs?status=scheduled"]),
        Endpoint("GET /jobs?status=succeeded", ["/api/v1/jobs?status=succeeded"]),
        Endpoint("GET /jobs?status=failed&limit=200", ["/api/v1/jobs?status=failed&limit=200"]),
        Endpoint(f"GET /jobs?task={common}", [f"/api/v1/jobs?task={common}"]),
        Endpoint(f"GET /jobs?task={rare}", [f"/api/v1/jobs?task={rare}"]),
        Endpoint("GET /jobs?priority=high", ["/api/v1/jobs?priority=high"]),
        Endpoint(f"GET /jobs?tenant={big}", [f"/api/v1/jobs?tenant={big}"]),
        Endpoint(f"GET /jobs?tenant={small}", [f"/api/v1/jobs?tenant={small}"]),
        Endpoint(f"GET /jobs?tenant={small}&status=failed", [f"/api/v1/jobs?tenant={small}&status=failed"]),
        Endpoint(
            f"GET /jobs?status=failed&task={rare}&priority=low",
            [f"/api/v1/jobs?status=failed&task={rare}&priority=low"],
        ),
        Endpoint("GET /jobs?cursor=(half-way)", [f"/api/v1/jobs?cursor={probe.cursors['all']}"]),
        Endpoint(
            "GET /jobs?status=succeeded&cursor=(half-way)",
            [f"/api/v1/jobs?status=succeeded&cursor={probe.cursors['succeeded']}"],
        ),
        Endpoint(
            "GET /jobs?status=queued&cursor=(half-way)",
            [f"/api/v1/jobs?status=queued&cursor={probe.cursors['queued']}"],
        ),
        Endpoint("GET /jobs (a tenant's member)", ["/api/v1/jobs"], key="member"),
        Endpoint("GET /jobs/{id} (ended)", [f"/api/v1/jobs/{i}" for i in probe.sample(probe.ended_ids)]),
        Endpoint(
            "GET /jobs/{id} (queued: estimate)", [f"/api/v1/jobs/{i}" for i in probe.sample(probe.queued_ids)]
        ),
        Endpoint(
            "GET /jobs/{id} (queued: estimate, averages cold)",
            [f"/api/v1/jobs/{i}" for i in probe.sample(probe.queued_ids)],
            cold=True,
        ),
        Endpoint(
            "GET /jobs/{id}/webhooks", [f"/api/v1/jobs/{i}/webhooks" for i in probe.sample(probe.ended_ids)]
        ),
        Endpoint("GET /jobs/stats", ["/api/v1/jobs/stats"]),
        Endpoint("GET /jobs/stats (a tenant's member)", ["/api/v1/jobs/stats"], key="member"),
        Endpoint("GET /queues", ["/api/v1/queues"]),
        Endpoint("GET /queues (a tenant's member)", ["/api/v1/queues"], key="member"),
        Endpoint("GET /queues/stats (1 h)", ["/api/v1/queues/stats?window_s=3600&bucket_s=60"]),
        Endpoint("GET /queues/stats (1 day)", ["/api/v1/queues/stats?window_s=86400&bucket_s=3600"]),
        Endpoint("GET /workers", ["/api/v1/workers"]),
        Endpoint("GET /schedules?limit=200", ["/api/v1/schedules?limit=200"]),
        Endpoint(
            "GET /schedules/{id}/jobs",
            [
                f"/api/v1/schedules/{scale_data.schedule_id(n)}/jobs"
                for n in range(scale_data.FIRING_SCHEDULES)
            ],
        ),
        Endpoint("GET /metrics", ["/metrics"]),
        Endpoint("GET /health", ["/api/v1/health"], ok=(200, 503)),  # 503: no worker runs
    ]


# -- timing -----------------------------------------------------------------------------------------


def measure(env: BenchEnv, database: Database, probe: Probe, options: ScaleOptions) -> dict[str, list[float]]:
    """Milliseconds per call of each endpoint, in order."""
    settings = Settings.model_validate(
        {
            "database_url": database.url,
            "redis_url": env.redis_url,
            "rate_limit_enabled": False,
            "log_level": "WARNING",
        }
    )
    found: dict[str, list[float]] = {}
    ttl_s = default_stats.ttl_s
    try:
        with TestClient(create_app(settings)) as client:
            headers = {name: {"Authorization": f"Bearer {key}"} for name, key in database.keys.items()}
            for endpoint in endpoints(probe):
                default_stats.ttl_s = 0.0 if endpoint.cold else ttl_s
                found[endpoint.label] = _time(client, endpoint, headers[endpoint.key], options)
    finally:
        default_stats.ttl_s = ttl_s
    return found


def _time(
    client: TestClient, endpoint: Endpoint, headers: dict[str, str], options: ScaleOptions
) -> list[float]:
    paths = cycle(endpoint.paths)
    for _ in range(WARMUP_CALLS):
        _call(client, endpoint, next(paths), headers)
    samples: list[float] = []
    deadline = time.monotonic() + options.budget_s
    while len(samples) < options.samples and (len(samples) < MIN_SAMPLES or time.monotonic() < deadline):
        samples.append(_call(client, endpoint, next(paths), headers))
    return samples


def _call(client: TestClient, endpoint: Endpoint, path: str, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    response = client.get(path, headers=headers)
    elapsed_ms = (time.perf_counter() - started) * 1000
    if response.status_code not in endpoint.ok:
        raise BenchError(f"{endpoint.label}: {path} answered {response.status_code}: {response.text[:300]}")
    return elapsed_ms


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _target_row(database: Database, size: int, label: str, samples: list[float]) -> Comparison:
    return Comparison(
        f"{database.name} {size:,} rows: {label} p95",
        "ms",
        lanes=[percentile(samples, 0.95)],
        better="lower",
        floor=Floor.limit(TARGET_MS),  # issue 11: every read under 50 ms p95; no bare RQ figure
        notes={
            "target_ms": TARGET_MS,
            "database": database.name,
            "rows": size,
            "endpoint": label,
            "p50_ms": round(statistics.median(samples), 2),
            "p95_ms": round(percentile(samples, 0.95), 2),
            "samples": len(samples),
            "seconds_to_seed": round(database.seconds_to_seed, 1),
        },
    )


# -- Redis: Lanes' counts beside bare RQ's ------------------------------------------------------------


def bare_counts(redis: Redis) -> dict[str, dict[str, int]]:
    """What `observe.rq_counts` reports, through RQ's own API: `Queue.count`, each registry's `count`."""
    counts = {}
    for name in observe.ALL_QUEUES:
        queue = Queue(name, connection=redis, serializer=JSONSerializer)
        registries = {
            "started": queue.started_job_registry,
            "scheduled": queue.scheduled_job_registry,
            "deferred": queue.deferred_job_registry,
            "finished": queue.finished_job_registry,
            "failed": queue.failed_job_registry,
            "canceled": queue.canceled_job_registry,
        }
        counts[name] = {"queued": queue.count, **{k: r.count for k, r in registries.items()}}
    return counts


def _timed_ms(action: Callable[[], object], calls: int) -> list[float]:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def _redis_counts(redis: Redis, queued: int, options: ScaleOptions) -> list[Comparison]:
    if observe.rq_counts(redis) != bare_counts(redis):
        raise BenchError("Lanes' queue counts differ from bare RQ's")
    lanes = _timed_ms(lambda: observe.rq_counts(redis), options.samples)
    bare = _timed_ms(lambda: bare_counts(redis), options.samples)
    notes = {"queued": queued, "calls": options.samples}
    return [
        Comparison(
            f"queue counts, {queued:,} queued, {name}",
            "ms",
            lanes=[percentile(lanes, q)],
            bare=[percentile(bare, q)],
            better="lower",
            notes={
                **notes,
                "lanes": "observe.rq_counts (one pipeline)",
                "bare": "Queue.count + registries' count",
            },
        )
        for name, q in (("p50", 0.5), ("p95", 0.95))
    ]


def _versus_bare(
    database: Database, queued: int, samples: list[float], redis: Redis, options: ScaleOptions
) -> Comparison:
    bare = _timed_ms(lambda: bare_counts(redis), options.samples)
    return Comparison(
        f"GET /api/v1/queues ({database.name}), {queued:,} queued, p95",
        "ms",
        lanes=[percentile(samples, 0.95)],
        bare=[percentile(bare, 0.95)],
        better="lower",
        notes={"queued": queued, "database": database.name, "bare": "Queue.count + registries' count"},
    )


# -- the table -------------------------------------------------------------------------------------


def table(rows: list[Comparison]) -> str:
    """p50/p95 per endpoint (rows) and database and size (columns); `!` marks a p95 over target."""
    scaled = [row for row in rows if "target_ms" in row.notes]
    columns = sorted(
        {(r.notes["database"], r.notes["rows"]) for r in scaled}, key=lambda c: (c[0] != "sqlite", c)
    )
    labels = list(dict.fromkeys(r.notes["endpoint"] for r in scaled))
    cells = {(r.notes["endpoint"], r.notes["database"], r.notes["rows"]): r.notes for r in scaled}
    width = max(len(label) for label in labels) + 2
    head = "".join(f"{f'{db} {_short(size)}':>16}" for db, size in columns)
    lines = [f"{'p50 / p95 (ms), target p95 < ' + format(TARGET_MS, 'g') + ' ms':<{width}}{head}"]
    for label in labels:
        line = f"{label:<{width}}"
        for db, size in columns:
            note = cells.get((label, db, size))
            if note is None:
                line += f"{'':>16}"
                continue
            mark = "!" if note["p95_ms"] > TARGET_MS else " "
            line += f"{note['p50_ms']:>8.1f} /{note['p95_ms']:>6.1f}{mark}"
        lines.append(line)
    return "\n".join(lines)


def _short(size: int) -> str:
    if size % 1_000_000 == 0:
        return f"{size // 1_000_000}M"
    if size % 1_000 == 0:
        return f"{size // 1_000}k"
    return f"{size:,}"
