"""A private world for one benchmark run: its own redis-server, database and child processes.

The database is a SQLite file in the run's temp directory, or with `postgres_url` a fresh
PostgreSQL database on that server, dropped at the end (`postgres_database`).

`BenchEnv` is a context manager. Everything it starts is stopped when the block ends, whether it
ends normally, by an exception, or by Ctrl-C / SIGTERM (see `bench.__main__`). Child processes run
in their own session, so a Ctrl-C in the terminal reaches only the benchmark, which then stops
them in order; a child that ignores SIGTERM has its process group killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from redis import Redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from backend import tenants
from backend.db import make_engine, make_sessionmaker
from backend.devredis import RedisServer
from backend.enums import Plan, Role
from backend.migrate import upgrade

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

STOP_TIMEOUT_S = 10.0
LOG_TAIL_CHARS = 3000


class BenchError(RuntimeError):
    """Raised when a benchmark cannot produce a figure: a process died, jobs went missing."""


def wait_for(
    condition: Callable[[], T | None], *, timeout_s: float, interval_s: float = 0.01, message: str
) -> T:
    """Poll `condition` until it returns something truthy; BenchError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:.0f} s waiting for {message}")
        time.sleep(interval_s)


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM inside the block (main thread only), restoring them after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Child:
    """A process this benchmark started; its output goes to `log_path`."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], log_path: Path):
        self.name = name
        self.process = process
        self.log_path = log_path

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL to its process group (work-horses included) if it lingers."""
        if not self.alive():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # Not yet reaped, so the pid (and the group it leads) is still ours.
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@contextmanager
def postgres_database(server_url: str) -> Iterator[str | None]:
    """A fresh database on the server at `server_url`, dropped on exit; None if the server is away."""
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        say(f"PostgreSQL does not answer at {server_url} ({type(exc).__name__})")
        admin.dispose()
        yield None
        return
    name = f"lanes_bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    say(f"PostgreSQL database {name} made for this run")
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        say(f"PostgreSQL database {name} dropped")


class BenchEnv:
    """A temp directory holding a private redis-server, and a migrated database: a SQLite file
    there, or a fresh PostgreSQL database on the server at `postgres_url`."""

    def __init__(self, *, keep: bool = False, postgres_url: str | None = None):
        self.keep = keep
        self.postgres_url = postgres_url
        self.directory = Path(tempfile.mkdtemp(prefix="lanes-bench-"))
        self.redis_server = RedisServer(self.directory / "redis")
        self.database_path = self.directory / "lanes.db"
        self.children: list[Child] = []
        self._clients: list[Redis] = []
        self._api_key: str | None = None
        self._postgres: str | None = None
        self._stack = ExitStack()

    # -- set-up and tear-down ------------------------------------------------------------------

    def __enter__(self) -> BenchEnv:
        try:
            if self.postgres_url is not None:
                self._postgres = self._stack.enter_context(postgres_database(self.postgres_url))
                if self._postgres is None:
                    raise BenchError(f"no PostgreSQL server answers at {self.postgres_url}")
            self.redis_server.start()
            upgrade(self.database_url, quiet=True)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop every child, then Redis; a second Ctrl-C meanwhile cannot cut this short."""
        with _interrupts_deferred():
            for child in reversed(self.children):
                child.stop()
            for client in self._clients:
                client.close()
            self.redis_server.stop()
            self._stack.close()  # the PostgreSQL database, if any
            if not self.keep:
                shutil.rmtree(self.directory, ignore_errors=True)

    # -- what a benchmark uses -----------------------------------------------------------------

    @property
    def redis_url(self) -> str:
        return self.redis_server.url

    @property
    def database_url(self) -> str:
        return self._postgres or f"sqlite:///{self.database_path}"

    def api_headers(self) -> dict[str, str]:
        """An API key of a `bench` tenant (unlimited plan), made once, as request headers."""
        if self._api_key is None:
            engine = make_engine(self.database_url)
            with make_sessionmaker(engine)() as session:
                tenant = tenants.create_tenant(session=session, name="bench", plan=Plan.UNLIMITED)
                self._api_key = tenants.create_key(session=session, tenant=tenant, role=Role.ADMIN).secret
            engine.dispose()
        return {"Authorization": f"Bearer {self._api_key}"}

    def redis(self) -> Redis:
        """A client on the private server, closed with the environment."""
        client = Redis.from_url(self.redis_url)
        self._clients.append(client)
        return client

    def flush_redis(self) -> None:
        client = Redis.from_url(self.redis_url)
        try:
            client.flushall()
        finally:
            client.close()

    def child_env(self, **lanes_settings: str) -> dict[str, str]:
        """Our environment minus any LANES_* of the caller's, pointed at the private services."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("LANES_")}
        env.update(
            REDIS_URL=self.redis_url,
            DATABASE_URL=self.database_url,
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
        )
        env.update({f"LANES_{key.upper()}": value for key, value in lanes_settings.items()})
        return env

    def spawn(self, name: str, args: Sequence[str], env: dict[str, str]) -> Child:
        """Start `args` in its own session, output to a log in the temp directory."""
        log_path = self.directory / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                list(args), env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        child = Child(name, process, log_path)
        self.children.append(child)
        return child


def say(message: str) -> None:
    """A progress line of the benchmark run, on stderr (the table goes to stdout)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)
