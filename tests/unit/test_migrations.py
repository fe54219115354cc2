"""Migrations that build indexes leave `jobs` writable on PostgreSQL while they run."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from backend.db import make_engine
from backend.migrate import downgrade, upgrade
from tests.conftest import empty_postgres
from tests.helpers import statements_waiting_for_a_lock, wait_for

INSERT = text(
    "INSERT INTO jobs (id, task, queue, priority, status, progress, params, attempts, epoch,"
    " max_retries, webhook_attempts, created_at, updated_at)"
    " VALUES (:id, 'demo.echo', 'normal', 'normal', 'queued', 0, '{}', 0, 0, 0, 0, now(), now())"
)
#: The index migration 0011 builds.
INDEX = "ix_jobs_task_status_created_run"


@pytest.fixture
def at_0010(postgres_database: str) -> Iterator[tuple[str, Engine]]:
    """The PostgreSQL database emptied and taken down to revision 0010; back at head after."""
    url = empty_postgres(postgres_database)
    downgrade(url, revision="0010", quiet=True)
    engine = make_engine(url)
    try:
        yield url, engine
    finally:
        engine.dispose()
        upgrade(url, quiet=True)


def index_state(engine: Engine) -> tuple[bool, int]:
    """Whether the index is valid, and how many columns it has."""
    with engine.connect() as conn:
        valid, columns = conn.execute(
            text(f"SELECT indisvalid, indnatts FROM pg_index WHERE indexrelid = '{INDEX}'::regclass")
        ).one()
    return bool(valid), int(columns)


def test_an_index_migration_lets_writes_through_while_it_waits_for_a_long_transaction(
    at_0010: tuple[str, Engine],
) -> None:
    url, engine = at_0010
    with engine.connect() as long_one, engine.connect() as watcher, engine.connect() as submit:
        long_one.execute(INSERT, {"id": "long"})  # a transaction that stays open, holding its write
        migrate = subprocess.Popen(
            [sys.executable, "-m", "backend.migrate", "--url", url, "0011"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        wait_for(
            lambda: statements_waiting_for_a_lock(watcher, "CREATE INDEX"),
            message="the index build to wait for the open transaction",
        )
        # A plain CREATE INDEX queues for a lock that every later write queues behind.
        submit.execute(text("SET lock_timeout = '3s'"))
        try:
            submit.execute(INSERT, {"id": "meanwhile"})
            submit.commit()
        except OperationalError as exc:
            pytest.fail(f"a write waited for the index build: {exc}")
        finally:
            long_one.rollback()
            output = migrate.communicate(timeout=60)[0].decode()

    assert migrate.returncode == 0, output
    assert index_state(engine) == (True, 6)


def test_an_upgrade_run_again_after_a_failed_index_build_replaces_the_invalid_leftover(
    at_0010: tuple[str, Engine],
) -> None:
    url, engine = at_0010
    with engine.begin() as conn:  # what a concurrent build that failed half-way leaves behind
        conn.execute(text(f"CREATE INDEX {INDEX} ON jobs (task)"))
        conn.execute(text(f"UPDATE pg_index SET indisvalid = false WHERE indexrelid = '{INDEX}'::regclass"))

    upgrade(url, revision="0011", quiet=True)

    assert index_state(engine) == (True, 6)
