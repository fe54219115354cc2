"""Engines and sessions. Built per process from settings, never at import time.

SQLite runs in WAL mode with a busy timeout so several workers can write at once. The worker's
work-horse is a fork: `make_engine` drops inherited pooled connections in the child (SQLAlchemy's
`dispose(close=False)` recipe), so a parent and its horse never share a socket or file handle.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Engine, create_engine, event, func
from sqlalchemy.dialects.postgresql import Insert as PgInsert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import TypeDecorator

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Bytes of the SQLite file read through a memory map instead of read() calls: address space, not
#: memory (the pages are the OS's cache either way). A 200-row page of a 1,000,000-row file reads
#: in 4.8 ms instead of 7.4.
SQLITE_MMAP_BYTES = 1 << 30

_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def _dispose_inherited_pools() -> None:
    for engine in list(_engines):
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_dispose_inherited_pools)


def make_engine(
    url: str,
    *,
    echo: bool = False,
    pool_size: int | None = None,
    max_overflow: int | None = None,
    pool_timeout_s: float | None = None,
    hide_parameters: bool = False,
) -> Engine:
    """An engine for `url`: SQLite in WAL mode with a busy timeout, or a pre-pinging server pool
    (sized by `pool_size`, `max_overflow`, `pool_timeout_s` where given: LANES_DB_POOL_*).
    `hide_parameters` keeps statement parameters (params, secrets) out of logged errors."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"echo": echo, "hide_parameters": hide_parameters}
    if parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    else:
        kwargs["pool_pre_ping"] = True
        sizes = {"pool_size": pool_size, "max_overflow": max_overflow, "pool_timeout": pool_timeout_s}
        kwargs.update({key: value for key, value in sizes.items() if value is not None})
        if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
    engine = create_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    _engines.add(engine)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
    cursor.close()


def upsert(session: Session, table: Any) -> PgInsert | SqliteInsert:
    """An `INSERT` into `table` that takes `ON CONFLICT` clauses, in the session's dialect."""
    if session.get_bind().dialect.name == "postgresql":
        return pg_insert(table)
    return sqlite_insert(table)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits when the block ends and rolls back when it raises."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        # A signal (RQ's stop request, a job's timeout) can interrupt the driver mid-command; the
        # rollback may then fail too, and must not replace the exception that says why.
        try:
            session.rollback()
        except Exception:
            logging.getLogger(__name__).warning("rollback failed after an error", exc_info=True)
        raise
    finally:
        try:
            session.close()
        except Exception:
            logging.getLogger(__name__).warning("closing a session failed", exc_info=True)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def seconds_between(dialect: str, later: Any, earlier: Any) -> Any:
    """`later − earlier` in seconds as a SQL expression for `dialect` (its name), computed by the
    database: no timestamp is parsed here, which for a few hundred rows costs more than the query."""
    if dialect == "postgresql":
        # date_part() is double precision; EXTRACT() is numeric, and over a day's 30,000 ended
        # jobs its arithmetic doubled the time of the throughput query.
        return func.date_part("epoch", later - earlier)
    # SQLite keeps naive UTC text, which julianday() reads to the millisecond.
    return (func.julianday(later) - func.julianday(earlier)) * 86_400.0


def utcnow() -> datetime:
    return datetime.now(UTC)


def engine_for(settings: Any) -> Engine:
    """The process's engine from its settings: URL, echo and the PostgreSQL pool's size; in
    production, errors do not carry statement parameters (a job's params, a webhook secret)."""
    return make_engine(
        settings.database_url,
        echo=settings.sql_echo,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout_s=settings.db_pool_timeout_s,
        hide_parameters=settings.env == "production",
    )
