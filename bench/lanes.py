"""Lanes in-process: the domain's `submit_job` on the benchmark's Redis and database.

The same code path the API runs behind `POST /api/v1/jobs`, minus HTTP: validate the params,
commit the SQL row, enqueue the JSON job.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from sqlalchemy import func, select

from backend.config import Settings
from backend.db import make_engine, make_sessionmaker
from backend.enums import JobStatus
from backend.jobs import submit_job
from backend.models import JobRow
from backend.queues import redis_for
from backend.tasks import registry

TASK = "demo.echo"
PARAMS: dict[str, Any] = {"message": "hello", "n": 1}


class LanesClient:
    """A Settings, an engine and a Redis client of this process, closed on exit."""

    def __init__(self, *, redis_url: str, database_url: str):
        self.settings = Settings.model_validate({"REDIS_URL": redis_url, "DATABASE_URL": database_url})
        registry.load_modules(self.settings.task_module_names())
        self.engine = make_engine(self.settings.database_url)
        self.sessions = make_sessionmaker(self.engine)
        self.redis = redis_for(self.settings)

    def __enter__(self) -> LanesClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.redis.close()
        self.engine.dispose()

    def submit(self, count: int) -> list[str]:
        """Submit `count` `demo.echo` jobs one by one, a session each as the API uses; their ids."""
        ids = []
        for _ in range(count):
            with self.sessions() as session:
                row = submit_job(
                    session=session,
                    redis=self.redis,
                    settings=self.settings,
                    tasks=registry,
                    task=TASK,
                    params=PARAMS,
                )
                ids.append(row.id)
        return ids

    def count_rows(self, status: JobStatus, ids: list[str]) -> int:
        with self.sessions() as session:
            query = select(func.count()).select_from(JobRow).where(JobRow.status == status.value)
            return int(session.scalar(query.where(JobRow.id.in_(ids))) or 0)
