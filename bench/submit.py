"""Submit throughput: jobs/s into the queue.

Lanes: `POST /api/v1/jobs` (`demo.echo`, small params) against the API as `make api` starts it
(`python -m backend.serve`: uvicorn, `LANES_API_PROCESSES`, by default one process per core), from
`concurrency` concurrent keep-alive HTTP/1.1 connections in this process (asyncio streams sending a
prepared request; see `_Connection`). Each request validates the params, commits a SQL row, and
enqueues a JSON job.

Bare RQ: `Queue.enqueue(bench.trivial.noop, kwargs=...)` one by one in this process, JSON
serializer, same Redis.

A second row runs Lanes' domain `submit_job()` one by one in this process, without HTTP, against the
same bare figure: the gap between rows one and two is what HTTP, uvicorn and FastAPI cost.

The batch row: `POST /api/v1/jobs/batch` with `batch_size` jobs a request, from the same concurrent
clients, against bare `Queue.enqueue_many` of `Queue.prepare_data` in batches of the same size
(one pipeline a batch), JSON serializer, same Redis.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from rq import Queue
from rq.serializers import JSONSerializer

from backend.devredis import free_port
from bench.env import BenchEnv, BenchError, Child, wait_for
from bench.lanes import PARAMS, TASK, LanesClient
from bench.report import Comparison, Floor
from bench.trivial import noop

API_START_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 30.0
BARE_QUEUE = "bench-submit"


@dataclass(frozen=True)
class SubmitOptions:
    rounds: int
    http_jobs: int  # requests per timed HTTP round
    inprocess_jobs: int  # jobs per timed in-process round (Lanes domain and bare RQ)
    concurrency: int
    warmup_jobs: int
    batch_jobs: int  # jobs per timed batch round (each side)
    batch_size: int  # jobs per batch request, and per bare enqueue_many


def run(env: BenchEnv, options: SubmitOptions) -> list[Comparison]:
    http = Comparison(
        "submit via API",
        "jobs/s",
        notes={"jobs_per_round": options.http_jobs, "concurrency": options.concurrency, "task": TASK},
        floor=Floor.ratio(0.5),  # issue 11: at least half of bare Queue.enqueue
    )
    domain = Comparison("submit_job() in-process", "jobs/s", notes={"jobs_per_round": options.inprocess_jobs})
    batch = Comparison(
        "submit batch via API",
        "jobs/s",
        notes={
            "jobs_per_round": options.batch_jobs,
            "batch_size": options.batch_size,
            "concurrency": options.concurrency,
            "task": TASK,
        },
        floor=Floor.ratio(0.5),  # issue 11: at least half of bare Queue.enqueue_many
    )
    redis = env.redis()
    bare_queue = Queue(BARE_QUEUE, connection=redis, serializer=JSONSerializer)
    api, base_url = start_api(env)
    headers = env.api_headers()

    with LanesClient(redis_url=env.redis_url, database_url=env.database_url) as lanes:
        # Warm every path once: imports, connection pools, SQLite pages, FastAPI's caches.
        post_many(base_url, options.warmup_jobs, options.concurrency, headers)
        post_batches(base_url, options.warmup_jobs, options.batch_size, options.concurrency, headers)
        lanes.submit(options.warmup_jobs)
        enqueue_bare(bare_queue, options.warmup_jobs)
        enqueue_many_bare(bare_queue, options.warmup_jobs, options.batch_size)

        for _ in range(options.rounds):
            env.flush_redis()
            elapsed = post_many(base_url, options.http_jobs, options.concurrency, headers)
            http.lanes.append(options.http_jobs / elapsed)
            domain.lanes.append(options.inprocess_jobs / timed(lambda: lanes.submit(options.inprocess_jobs)))
            bare_rate = options.inprocess_jobs / timed(
                lambda: enqueue_bare(bare_queue, options.inprocess_jobs)
            )
            http.bare.append(bare_rate)
            domain.bare.append(bare_rate)
            env.flush_redis()
            elapsed = post_batches(
                base_url, options.batch_jobs, options.batch_size, options.concurrency, headers
            )
            batch.lanes.append(options.batch_jobs / elapsed)
            batch.bare.append(
                options.batch_jobs
                / timed(lambda: enqueue_many_bare(bare_queue, options.batch_jobs, options.batch_size))
            )
            if not api.alive():
                raise BenchError(f"the API process exited during the benchmark:\n{api.log_tail()}")
    api.stop()
    return [http, domain, batch]


# -- Lanes over HTTP ---------------------------------------------------------------------------


#: The API's rate limits while it is measured.
BENCH_RATE_LIMIT = "1000000/minute"


def start_api(env: BenchEnv) -> tuple[Child, str]:
    """The API as `make api` runs it (`python -m backend.serve`: uvicorn, one process per core by
    default) on a free port, once it answers; and its URL."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "backend.serve"]
    # Limits on, as deployed, but far above what the benchmark sends: their cost is measured.
    limits = {f"rate_limit_{name}": BENCH_RATE_LIMIT for name in ("submit", "batch", "default")}
    settings = {"api_host": "127.0.0.1", "api_port": str(port), **limits}
    child = env.spawn("api", args, env.child_env(log_level="WARNING", **settings))

    def ready() -> bool:
        if not child.alive():
            raise BenchError(f"the API process exited at start-up:\n{child.log_tail()}")
        try:
            return httpx.get(f"{base_url}/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, timeout_s=API_START_TIMEOUT_S, interval_s=0.1, message="the API to answer")
    return child, base_url


def post_many(base_url: str, count: int, concurrency: int, headers: dict[str, str]) -> float:
    """POST `count` jobs with `concurrency` requests in flight; seconds taken. Raises on any non-202."""
    return asyncio.run(_post_many(base_url, count, concurrency, headers))


async def _post_many(base_url: str, count: int, concurrency: int, headers: dict[str, str]) -> float:
    request = _request_bytes(base_url, "/api/v1/jobs", {"task": TASK, "params": PARAMS}, headers)
    remaining = count
    failures: list[str] = []
    connections = [await _Connection.open(base_url) for _ in range(concurrency)]

    async def one_client(connection: _Connection) -> None:
        nonlocal remaining
        while remaining > 0 and not failures:
            remaining -= 1
            status_code, body = await connection.send(request)
            if status_code != 202:
                failures.append(f"{status_code} {body[:300]!r}")

    try:
        started = time.perf_counter()
        await asyncio.gather(*(one_client(connection) for connection in connections))
        elapsed = time.perf_counter() - started
    finally:
        for connection in connections:
            await connection.close()
    if failures:
        raise BenchError(f"POST /api/v1/jobs failed: {failures[0]}")
    return elapsed


def post_batches(
    base_url: str, count: int, batch_size: int, concurrency: int, headers: dict[str, str]
) -> float:
    """POST `count` jobs in batches of `batch_size` (the last may be smaller) with `concurrency`
    requests in flight; seconds taken. Raises on any non-202 or a short answer."""
    sizes = [min(batch_size, count - start) for start in range(0, count, batch_size)]
    return asyncio.run(_post_batches(base_url, sizes, concurrency, headers))


async def _post_batches(base_url: str, sizes: list[int], concurrency: int, headers: dict[str, str]) -> float:
    requests = {
        size: _request_bytes(
            base_url, "/api/v1/jobs/batch", {"jobs": [{"task": TASK, "params": PARAMS}] * size}, headers
        )
        for size in set(sizes)
    }
    pending = list(reversed(sizes))
    failures: list[str] = []
    connections = [await _Connection.open(base_url) for _ in range(concurrency)]

    async def one_client(connection: _Connection) -> None:
        while pending and not failures:
            size = pending.pop()
            status_code, body = await connection.send(requests[size])
            if status_code != 202:
                failures.append(f"{status_code} {body[:300]!r}")
            elif (accepted := len(json.loads(body)["jobs"])) != size:
                failures.append(f"{size} jobs sent, {accepted} accepted")

    try:
        started = time.perf_counter()
        await asyncio.gather(*(one_client(connection) for connection in connections))
        elapsed = time.perf_counter() - started
    finally:
        for connection in connections:
            await connection.close()
    if failures:
        raise BenchError(f"POST /api/v1/jobs/batch failed: {failures[0]}")
    return elapsed


def _request_bytes(base_url: str, path: str, body: object, headers: dict[str, str]) -> bytes:
    """A whole HTTP/1.1 POST of `body` as JSON, ready to send again and again on a kept-alive connection."""
    content = json.dumps(body, separators=(",", ":")).encode()
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {urlsplit(base_url).netloc}",
        "Content-Type: application/json",
        f"Content-Length: {len(content)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + content


class _Connection:
    """One kept-alive HTTP/1.1 connection that sends a prepared request and reads its answer.

    The load generator shares the machine's cores with the API, so it is kept lean: httpx spent
    about 1.7 ms of CPU a request here, more than the API's own work for a single submit.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, base_url: str) -> _Connection:
        parts = urlsplit(base_url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(reader, writer)

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """The status code and body of the answer to `request`."""
        self.writer.write(request)
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            fields = dict(line.split(":", 1) for line in header_lines if line)
            lengths = [value for name, value in fields.items() if name.lower() == "content-length"]
            if not lengths:
                raise BenchError(f"an answer without Content-Length: {status_line}")
            body = await self.reader.readexactly(int(lengths[0]))
        return int(status_line.split(" ", 2)[1]), body

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


# -- bare RQ -------------------------------------------------------------------------------------


def enqueue_bare(queue: Queue, count: int) -> None:
    for _ in range(count):
        queue.enqueue(noop, kwargs=PARAMS)


def enqueue_many_bare(queue: Queue, count: int, batch_size: int) -> None:
    """`count` jobs through `Queue.enqueue_many`, `batch_size` at a time (one pipeline each)."""
    for start in range(0, count, batch_size):
        size = min(batch_size, count - start)
        queue.enqueue_many([Queue.prepare_data(noop, kwargs=PARAMS) for _ in range(size)])


def timed(action: Callable[[], object]) -> float:
    """Seconds `action()` takes."""
    started = time.perf_counter()
    action()
    return time.perf_counter() - started
