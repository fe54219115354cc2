"""Shared fixtures: real Redis servers, SQLite and PostgreSQL databases, the API, real workers and schedulers.

Every test that touches SQL takes `database_url`, which runs it on SQLite and on PostgreSQL.
PostgreSQL is at LANES_TEST_POSTGRES_URL (default: the local server's `test` database); where it
does not answer the PostgreSQL cases are skipped, except under CI=true, where they fail.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from fastapi.testclient import TestClient
from redis import Redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from backend import tenants
from backend.config import Settings
from backend.db import make_engine, make_sessionmaker
from backend.devredis import RedisServer
from backend.enums import Plan, Role
from backend.main import create_app
from backend.migrate import upgrade
from backend.models import Base
from backend.tasks import registry
from tests.helpers import SchedulerFactory, WorkerFactory


def _postgres_server() -> str:
    """The PostgreSQL server the tests make their databases on: LANES_TEST_POSTGRES_URL, else a
    PostgreSQL DATABASE_URL (as in CI), else the local one."""
    database_url = os.environ.get("DATABASE_URL", "")
    fallback = (
        database_url
        if database_url.startswith("postgresql")
        else "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    return os.environ.get("LANES_TEST_POSTGRES_URL", fallback)


POSTGRES_URL = _postgres_server()
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


# -- databases -----------------------------------------------------------------------------------


def _postgres_answers() -> str | None:
    try:
        engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    upgrade(f"sqlite:///{path}", quiet=True)
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database, migrated once for the session, dropped at the end."""
    problem = _postgres_answers()
    if problem:
        if IN_CI:
            pytest.fail(f"PostgreSQL must answer in CI at {POSTGRES_URL}: {problem}")
        pytest.skip(f"PostgreSQL does not answer at {POSTGRES_URL}: {problem}")
    name = f"lanes_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    upgrade(url, quiet=True)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database: a fresh SQLite file, or the session's PostgreSQL database emptied."""
    if request.param == "sqlite":
        path = tmp_path / "lanes.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_database")
    return empty_postgres(url)


def empty_postgres(url: str) -> str:
    """Empty every table of the PostgreSQL database at `url` (each model's, so new tables come along)."""
    tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables}"))
    engine.dispose()
    return url


@pytest.fixture
def session(database_url: str) -> Iterator[Session]:
    engine = make_engine(database_url)
    with make_sessionmaker(engine)() as s:
        yield s
    engine.dispose()


# -- Redis ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private redis-server for the session; tests that stop or restart Redis start their own."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The private server's URL, flushed before and after the test."""
    client = Redis.from_url(redis_server.url)
    client.flushall()
    yield redis_server.url
    client.flushall()
    client.close()


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def fake_redis() -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis()
    yield client
    client.flushall()


# -- the app and its processes --------------------------------------------------------------------


@pytest.fixture
def make_settings(database_url: str) -> Any:
    """`make_settings(redis_url, **overrides)`: settings on the test database.

    Rate limits are off unless a test turns them on (`tests/unit/test_rate_limits.py` does): the
    stories of the other tests make more calls a minute than the default limits allow.
    """

    def build(redis_url: str = "redis://127.0.0.1:1/0", **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "redis_url": redis_url,
            "rate_limit_enabled": False,
            **overrides,
        }
        return Settings.model_validate(values)

    return build


def tenant_key(database_url: str, name: str, *, role: Role = Role.ADMIN, plan: Plan = Plan.UNLIMITED) -> str:
    """A new key of tenant `name` (made on `plan` if it does not exist) in the test database."""
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            tenant = tenants.ensure_tenant(session=session, name=name, plan=plan)
            return tenants.create_key(session=session, tenant=tenant, role=role).secret
    finally:
        engine.dispose()


@pytest.fixture
def settings(make_settings: Any, redis_url: str) -> Settings:
    """Settings on the test database and the private Redis, with their task modules loaded.

    A test file may define its own `settings` to change some.
    """
    settings: Settings = make_settings(redis_url)
    registry.load_modules(settings.task_module_names())
    return settings


@pytest.fixture
def auth_headers(database_url: str) -> dict[str, str]:
    """A platform admin's key (an admin of the operator's tenant): it sees every tenant."""
    return {"Authorization": f"Bearer {tenant_key(database_url, 'operator')}"}


@pytest.fixture
def make_client(auth_headers: dict[str, str]) -> Callable[..., TestClient]:
    """`make_client(settings, redis=None)`: a client of the API for `settings`, as a platform admin."""

    def build(settings: Settings, *, redis: Redis | None = None) -> TestClient:
        return TestClient(create_app(settings, redis=redis), headers=auth_headers)

    return build


@pytest.fixture
def api(make_settings: Any, fake_redis: fakeredis.FakeRedis, make_client: Any) -> Iterator[TestClient]:
    """The API on the test database and fakeredis, called as a platform admin: fast HTTP tests."""
    with make_client(make_settings(), redis=fake_redis) as client:
        yield client


@pytest.fixture
def live_api(make_settings: Any, redis_url: str, make_client: Any) -> Iterator[TestClient]:
    """The API on the test database and the private real Redis, called as a platform admin."""
    with make_client(make_settings(redis_url, retry_base_s=1)) as client:
        yield client


@pytest.fixture
def workers(redis_url: str, database_url: str, tmp_path: Path) -> Iterator[WorkerFactory]:
    """Starts real worker processes; all are stopped when the test ends."""
    factory = WorkerFactory(redis_url=redis_url, database_url=database_url, log_dir=tmp_path)
    yield factory
    factory.stop_all()


#: Scheduler settings for tests: a pass every 0.2 s and a sync every 0.5 s instead of 1 s and 5 s.
FAST_SCHEDULER = {"scheduler_interval_s": 0.2, "scheduler_sync_s": 0.5}


@pytest.fixture
def schedulers(redis_url: str, database_url: str, tmp_path: Path) -> Iterator[SchedulerFactory]:
    """Starts real scheduler daemons (fast passes and syncs); all are stopped when the test ends."""
    factory = SchedulerFactory(
        redis_url=redis_url, database_url=database_url, log_dir=tmp_path, settings=dict(FAST_SCHEDULER)
    )
    yield factory
    factory.stop_all()
