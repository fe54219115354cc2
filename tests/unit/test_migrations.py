"""Migrations that build indexes leave `jobs` writable on PostgreSQL while they run."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import OperationalError

from backend.db import make_engine
from backend.migrate import downgrade, upgrade
from tests.conftest import empty_postgres
from tests.helpers import wait_for

INSERT = text(
    "INSERT INTO jobs (id, task, queue, priority, status, progress, params, attempts, epoch,"
    " max_retries, webhook_attempts, created_at, updated_at)"
    " VALUES (:id, 'demo.echo', 'normal', 'normal', 'queued', 0, '{}', 0, 0, 0, 0, now(), now())"
)


def test_an_index_migration_lets_writes_through_while_it_waits_for_a_long_transaction(
    postgres_database: str,
) -> None:
    url = empty_postgres(postgres_database)
    downgrade(url, revision="0010", quiet=True)
    engine = make_engine(url)

    def waiting_index_builds(watcher: Connection) -> int:
        found = watcher.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND query ILIKE 'CREATE INDEX%' AND wait_event_type = 'Lock'"
            )
        ).scalar()
        watcher.rollback()  # PostgreSQL keeps one snapshot of its statistics per transaction
        return int(found or 0)

    try:
        with engine.connect() as long_one, engine.connect() as watcher, engine.connect() as submit:
            long_one.execute(INSERT, {"id": "long"})  # a transaction that stays open, holding its write
            migrate = subprocess.Popen(
                [sys.executable, "-m", "backend.migrate", "--url", url, "0011"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            wait_for(
                lambda: waiting_index_builds(watcher),
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
        with engine.connect() as conn:
            valid = conn.execute(
                text(
                    "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                    " WHERE c.relname = 'ix_jobs_task_status_created_run'"
                )
            ).scalar()
        assert valid is True
    finally:
        engine.dispose()
        upgrade(url, quiet=True)


def test_an_upgrade_run_again_after_a_failed_index_build_replaces_the_invalid_leftover(
    postgres_database: str,
) -> None:
    url = empty_postgres(postgres_database)
    downgrade(url, revision="0010", quiet=True)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:  # what a concurrent build that failed half-way leaves behind
            conn.execute(text("CREATE INDEX ix_jobs_task_status_created_run ON jobs (task)"))
            conn.execute(
                text(
                    "UPDATE pg_index SET indisvalid = false WHERE indexrelid ="
                    " 'ix_jobs_task_status_created_run'::regclass"
                )
            )

        upgrade(url, revision="0011", quiet=True)

        with engine.connect() as conn:
            valid, columns = conn.execute(
                text(
                    "SELECT i.indisvalid, i.indnatts FROM pg_index i"
                    " WHERE i.indexrelid = 'ix_jobs_task_status_created_run'::regclass"
                )
            ).one()
        assert valid is True and columns == 6
    finally:
        engine.dispose()
        upgrade(url, quiet=True)
