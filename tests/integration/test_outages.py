"""Redis and the database go away under load and come back; nothing is lost and nothing has to
be restarted. Each test has a redis-server of its own, since it stops and starts it."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis
from rq.job import JobStatus as RQStatus
from sqlalchemy.engine import make_url

from backend.devredis import RedisServer
from backend.queues import LanesJob
from backend.schedule_entries import ENTRIES_KEY
from tests.conftest import tenant_key
from tests.helpers import ApiFactory, SchedulerFactory, WorkerFactory, wait_for

pytestmark = pytest.mark.integration

ON_SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

log = logging.getLogger(__name__)

TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@dataclass
class Platform:
    """API, worker and scheduler processes on the test's own Redis; all stopped when it ends."""

    apis: ApiFactory
    workers: WorkerFactory
    schedulers: SchedulerFactory


@pytest.fixture
def platform(own_redis: RedisServer, database_url: str, tmp_path: Path) -> Iterator[Platform]:
    found = Platform(
        ApiFactory(own_redis.url, database_url, tmp_path),
        WorkerFactory(own_redis.url, database_url, tmp_path),
        SchedulerFactory(own_redis.url, database_url, tmp_path),
    )
    yield found
    for factory in (found.apis, found.workers, found.schedulers):
        factory.stop_all()


def restart(server: RedisServer, *, down_s: float, wipe: bool = False) -> None:
    """Stop the server (SIGTERM: it writes its AOF), keep it down `down_s`, start it on the same port."""
    server.stop()
    if wipe:
        for path in server.directory.glob("appendonly*"):
            if path.is_dir():
                for part in path.iterdir():
                    part.unlink()
            else:
                path.unlink()
    time.sleep(down_s)  # the outage itself: its length is the point, not a wait for a condition
    server.start()


class Load(threading.Thread):
    """Submits `demo.echo` jobs one after another until stopped; keeps every answer."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(daemon=True)
        self.url, self.headers = url, {"Authorization": f"Bearer {key}"}
        self.stopping = threading.Event()
        self.accepted: list[str] = []
        self.statuses: list[int] = []
        self.at: list[float] = []  # time.monotonic() of each answer

    def run(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=15) as client:
            while not self.stopping.is_set():
                try:
                    answer = client.post("/api/v1/jobs", json={"task": "demo.echo", "params": {"n": 1}})
                except httpx.HTTPError:
                    self.statuses.append(0)
                    self.at.append(time.monotonic())
                    continue
                self.statuses.append(answer.status_code)
                self.at.append(time.monotonic())
                if answer.status_code == 202:
                    self.accepted.append(answer.json()["id"])
                time.sleep(0.02)


def statuses(api_url: str, key: str, ids: list[str]) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    found = {}
    for job_id in ids:
        found[job_id] = httpx.get(f"{api_url}/api/v1/jobs/{job_id}", headers=headers, timeout=15).json()[
            "status"
        ]
    return found


@ON_SQLITE
def test_a_redis_restart_under_load_loses_no_job_and_needs_no_restart_of_anything(
    own_redis: RedisServer, platform: Platform, database_url: str
) -> None:
    key = tenant_key(database_url, "acme")
    # retry_base_s: a job the outage cut off retries soon
    api = platform.apis.start(rate_limit_enabled=False, retry_base_s=1)
    first, second = platform.workers.start(), platform.workers.start()
    scheduler = platform.schedulers.start(reconcile_grace_s=5)
    load = Load(api.url, key)
    load.start()
    wait_for(lambda: len(load.accepted) >= 20, message="some jobs before the outage")

    restart(own_redis, down_s=3)
    back = time.monotonic()
    during = len(load.statuses)
    wait_for(lambda: load.statuses[-5:] == [202] * 5, timeout_s=30, message="submits to be accepted again")
    load.stopping.set()
    load.join(timeout=30)

    answered = set(load.statuses)
    assert 503 in answered, "the API should have answered 503 while Redis was down"
    assert answered <= {202, 503}, answered  # never a 500, never a dropped connection
    assert during < len(load.statuses)
    ids = load.accepted
    final = wait_for(
        lambda: (found := statuses(api.url, key, ids)) and set(found.values()) <= TERMINAL and found,
        timeout_s=120,
        interval_s=1,
        message="every accepted job to end",
    )
    assert set(final.values()) == {"succeeded"}
    for process in (first, second, scheduler, api):
        assert process.process.poll() is None, process.log()
    first_after = next(t for t, code in zip(load.at, load.statuses, strict=True) if t > back and code == 202)
    log.info(
        "%d jobs accepted, %d refused with 503; the API took submits again %.2f s after Redis was back",
        len(ids),
        load.statuses.count(503),
        first_after - back,
    )


@ON_SQLITE
def test_a_redis_that_comes_back_empty_gets_its_schedules_and_queued_jobs_back_from_sql(
    own_redis: RedisServer, platform: Platform, database_url: str
) -> None:
    key = tenant_key(database_url, "acme")
    headers = {"Authorization": f"Bearer {key}"}
    probe = Redis.from_url(own_redis.url)
    try:
        api = platform.apis.start(rate_limit_enabled=False)
        platform.schedulers.start(reconcile_interval_s=2, reconcile_grace_s=1)
        created = httpx.post(
            f"{api.url}/api/v1/schedules",
            json={"name": "nightly", "task": "demo.echo", "cron": "0 3 * * *"},
            headers=headers,
            timeout=15,
        )
        assert created.status_code == 201, created.text
        wait_for(lambda: probe.zcard(ENTRIES_KEY) == 1, message="the schedule's entry in Redis")
        ids = [
            httpx.post(
                f"{api.url}/api/v1/jobs", json={"task": "demo.echo"}, headers=headers, timeout=15
            ).json()["id"]
            for _ in range(5)
        ]  # no worker yet: they wait on the queue

        restart(own_redis, down_s=1, wipe=True)
        assert probe.dbsize() == 0 or probe.llen("rq:queue:normal") == 0  # it came back with nothing

        wait_for(lambda: probe.zcard(ENTRIES_KEY) == 1, timeout_s=30, message="the schedule's entry again")
        platform.workers.start()
        final = wait_for(
            lambda: (found := statuses(api.url, key, ids)) and set(found.values()) == {"succeeded"} and found,
            timeout_s=60,
            interval_s=0.5,
            message="every queued job to be put back and run",
        )
        assert len(final) == 5
    finally:
        probe.close()


class Cuttable(threading.Thread):
    """A TCP proxy to PostgreSQL that can be cut (every connection closed, new ones refused) and
    mended: the database going away and coming back, as far as its clients can tell."""

    def __init__(self, target_port: int) -> None:
        super().__init__(daemon=True)
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = threading.Event()
        self.open.set()
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()

    def run(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.open.clear()
        with self.lock:
            for end in self.sockets:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
            self.sockets.clear()

    def mend(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_jobs_that_end_while_the_database_is_away_are_not_failed_or_run_again_and_their_rows_catch_up(
    own_redis: RedisServer, platform: Platform, database_url: str
) -> None:
    server = make_url(database_url)
    proxy = Cuttable(server.port or 5432)
    proxy.start()
    proxied = server.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    platform.workers.database_url = proxied  # the API reads the database directly
    key = tenant_key(database_url, "acme")
    headers = {"Authorization": f"Bearer {key}"}
    probe = Redis.from_url(own_redis.url)
    try:
        api = platform.apis.start(rate_limit_enabled=False)
        platform.workers.start()
        proxy.cut()
        ids = [
            httpx.post(
                f"{api.url}/api/v1/jobs",
                json={"task": "demo.sleep", "params": {"seconds": 0.2}},
                headers=headers,
            ).json()["id"]
            for _ in range(6)
        ]
        # They run and finish in RQ while no mirror write can reach the database.
        wait_for(
            lambda: all(LanesJob.fetch(i, connection=probe).get_status() == RQStatus.FINISHED for i in ids),
            timeout_s=60,
            message="the jobs to finish in RQ",
        )
        assert set(statuses(api.url, key, ids).values()) <= {"queued", "started"}

        proxy.mend()
        mended = time.monotonic()
        final = wait_for(
            lambda: (
                (found := rows(api.url, key, ids))
                and all(r["status"] == "succeeded" for r in found)
                and found
            ),
            timeout_s=30,
            interval_s=0.5,
            message="the rows to catch up within 30 s of the database's return",
        )
        assert [r["attempts"] for r in final] == [1] * len(ids)  # each ran once
        for job_id in ids:
            assert len(LanesJob.fetch(job_id, connection=probe).results()) == 1
        log.info("rows caught up %.1f s after the database came back", time.monotonic() - mended)
    finally:
        probe.close()
        proxy.close()


def rows(api_url: str, key: str, ids: list[str]) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"}
    return [httpx.get(f"{api_url}/api/v1/jobs/{i}", headers=headers, timeout=15).json() for i in ids]


@ON_SQLITE
def test_eight_workers_writing_to_one_sqlite_file_never_meet_a_locked_database(
    platform: Platform, database_url: str
) -> None:
    key = tenant_key(database_url, "acme")
    workers = platform.workers
    api = platform.apis.start(rate_limit_enabled=False)
    started = [workers.start(wait_ready=False) for _ in range(8)]
    for worker in started:
        workers.wait_ready(worker, timeout_s=60)
    batch = [{"task": "demo.sleep", "params": {"seconds": 0, "steps": 3}} for _ in range(100)]
    answer = httpx.post(
        f"{api.url}/api/v1/jobs/batch",
        json={"jobs": batch},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert answer.status_code == 202, answer.text
    ids = [job["id"] for job in answer.json()["jobs"]]

    final = wait_for(
        lambda: (found := statuses(api.url, key, ids)) and set(found.values()) <= TERMINAL and found,
        timeout_s=120,
        interval_s=1,
        message="every job to end",
    )

    assert set(final.values()) == {"succeeded"}
    took_part = [w for w in started if "lanes.jobs: job" in w.log()]
    assert len(took_part) >= 4, "the jobs should have been spread over the workers"
    logs = "".join(w.log() for w in started) + api.log()
    assert "database is locked" not in logs
    assert "SQL mirror write failed" not in logs
