"""Test helpers: waiting on conditions with deadlines, real worker and scheduler processes, and
`jobs` rows built for a test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, text

from backend.models import JobRow

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent


def job_row(**columns: Any) -> JobRow:
    """A `jobs` row (not added to a session): a queued `demo.echo` job on `normal`, made now, with
    `columns` over those defaults (`priority` follows `queue`, `updated_at` `created_at`)."""
    created = columns.get("created_at") or datetime.now(UTC)
    queue = columns.get("queue", "normal")
    defaults: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "task": "demo.echo",
        "queue": queue,
        "priority": queue,
        "status": "queued",
        "params": {},
        "created_at": created,
        "updated_at": created,
    }
    return JobRow(**{**defaults, **columns})


def wait_for(
    condition: Callable[[], T], *, timeout_s: float = 20.0, interval_s: float = 0.05, message: str = ""
) -> T:
    """Poll `condition` until it returns something truthy; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(
        f"timed out after {timeout_s} s waiting for {message or condition}; last value: {last!r}"
    )


def lanes_env(*, redis_url: str, database_url: str, **settings: Any) -> dict[str, str]:
    """The environment for a Lanes process: ours, plus the given settings as LANES_ variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANES_")}
    env.update(REDIS_URL=redis_url, DATABASE_URL=database_url, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    env.setdefault("LANES_LOG_LEVEL", "INFO")
    for key, value in settings.items():
        env[f"LANES_{key.upper()}"] = str(value)
    return env


@dataclass
class LanesProcess:
    """A real Lanes process (`python -m worker`, `python -m scheduler`); its output goes to `log_path`."""

    process: subprocess.Popen[bytes]
    log_path: Path
    name: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout_s: float = 20.0) -> int:
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class WorkerProcess(LanesProcess):
    """A real `python -m worker` process."""


class ApiProcess(LanesProcess):
    """A real `uvicorn backend.main:app` process, serving at `url`."""

    url: str = ""


@dataclass
class ApiFactory:
    """Starts API processes (uvicorn) against one Redis and one database; stops them all at teardown."""

    redis_url: str
    database_url: str
    log_dir: Path
    started: list[ApiProcess] = field(default_factory=list)

    def start(self, **settings: Any) -> ApiProcess:
        from backend.devredis import free_port

        port = free_port()
        name = f"api{len(self.started) + 1}"
        log_path = self.log_dir / f"{name}.log"
        env = lanes_env(redis_url=self.redis_url, database_url=self.database_url, **settings)
        args = [
            sys.executable,
            "-m",
            "uvicorn",
            "backend.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        with log_path.open("wb") as log:
            process = subprocess.Popen(args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        api = ApiProcess(process=process, log_path=log_path, name=name)
        api.url = f"http://127.0.0.1:{port}"
        self.started.append(api)
        wait_for(lambda: process.poll() is not None or _answers(api.url), message=f"{name} to answer")
        assert process.poll() is None, f"{name} exited:\n{api.log()}"
        return api

    def stop_all(self) -> None:
        for api in self.started:
            api.stop()


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


class SchedulerProcess(LanesProcess):
    """A real `python -m scheduler` process."""


@dataclass
class WorkerFactory:
    """Starts worker processes against one Redis and one database; stops them all at teardown."""

    redis_url: str
    database_url: str
    log_dir: Path
    settings: dict[str, Any] = field(default_factory=dict)
    started: list[WorkerProcess] = field(default_factory=list)
    #: How `wait_ready` reaches Redis, where `redis_url` alone cannot (TLS, ACL, Sentinel).
    connect: Callable[[], Any] | None = None

    def start(
        self,
        *queues: str,
        name: str | None = None,
        wait_ready: bool = True,
        processes: int = 1,
        **settings: Any,
    ) -> WorkerProcess:
        """`python -m worker`; with `processes` > 1 a pool, whose workers are `<name>-1` … `<name>-N`."""
        name = name or f"w{len(self.started) + 1}-{os.getpid()}"
        log_path = self.log_dir / f"{name}.log"
        env = lanes_env(
            redis_url=self.redis_url, database_url=self.database_url, **{**self.settings, **settings}
        )
        args = [sys.executable, "-m", "worker", *queues, "--name", name, "--processes", str(processes)]
        with log_path.open("wb") as log:
            process = subprocess.Popen(args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        worker = WorkerProcess(process=process, log_path=log_path, name=name)
        self.started.append(worker)
        if wait_ready:
            names = [name] if processes == 1 else [f"{name}-{i}" for i in range(1, processes + 1)]
            self.wait_ready(worker, names=names)
        return worker

    def wait_ready(
        self, worker: WorkerProcess, timeout_s: float = 20.0, names: list[str] | None = None
    ) -> None:
        from redis import Redis

        client = self.connect() if self.connect else Redis.from_url(self.redis_url)
        try:
            # Registered is not enough: RQ installs its SIGTERM handler just before the worker first
            # goes idle (or busy), and a signal before that kills it outright.
            wait_for(
                lambda: (
                    worker.process.poll() is not None
                    or all(
                        client.hget(f"rq:worker:{name}", "state") in (b"idle", b"busy")
                        for name in names or [worker.name]
                    )
                ),
                timeout_s=timeout_s,
                message=f"worker {worker.name} to be ready",
            )
        finally:
            client.close()
        assert worker.process.poll() is None, f"worker {worker.name} exited:\n{worker.log()}"

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()


@dataclass
class SchedulerFactory:
    """Starts scheduler daemons against one Redis and one database; stops them all at teardown."""

    redis_url: str
    database_url: str
    log_dir: Path
    settings: dict[str, Any] = field(default_factory=dict)
    started: list[SchedulerProcess] = field(default_factory=list)

    def start(
        self,
        *,
        name: str | None = None,
        housekeeping: bool = True,
        wait_ready: bool = True,
        env: dict[str, str] | None = None,
        **settings: Any,
    ) -> SchedulerProcess:
        """`python -m scheduler` with `settings` as LANES_ variables and `env` on top of them."""
        name = name or f"s{len(self.started) + 1}-{os.getpid()}"
        log_path = self.log_dir / f"{name}.log"
        environment = lanes_env(
            redis_url=self.redis_url, database_url=self.database_url, **{**self.settings, **settings}
        )
        environment.update(env or {})
        args = [sys.executable, "-m", "scheduler", "--name", name]
        if not housekeeping:
            args.append("--no-housekeeping")
        with log_path.open("wb") as log:
            process = subprocess.Popen(args, env=environment, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        scheduler = SchedulerProcess(process=process, log_path=log_path, name=name)
        self.started.append(scheduler)
        if wait_ready:
            self.wait_ready(scheduler)
        return scheduler

    def wait_ready(self, scheduler: SchedulerProcess, timeout_s: float = 20.0) -> None:
        from redis import Redis
        from rq_scheduler import Scheduler

        client = Redis.from_url(self.redis_url)
        key = f"{Scheduler.redis_scheduler_namespace_prefix}{scheduler.name}"
        try:
            # The first heartbeat comes after the signal handlers are installed: from then on a
            # SIGTERM asks the scheduler to stop instead of killing it outright.
            wait_for(
                lambda: scheduler.process.poll() is not None or client.hexists(key, "heartbeat"),
                timeout_s=timeout_s,
                message=f"scheduler {scheduler.name} to be ready",
            )
        finally:
            client.close()
        assert scheduler.process.poll() is None, f"scheduler {scheduler.name} exited:\n{scheduler.log()}"

    def stop_all(self) -> None:
        for scheduler in self.started:
            scheduler.signal()
        for scheduler in self.started:
            scheduler.stop()


def statements_waiting_for_a_lock(observer: Connection, statement: str) -> int:
    """How many statements that start with `statement` wait for a lock in this PostgreSQL database."""
    waiting = observer.execute(
        text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query ILIKE :statement"
        ),
        {"statement": f"{statement}%"},
    ).scalar()
    observer.rollback()  # PostgreSQL keeps one snapshot of its statistics per transaction
    return int(waiting or 0)
