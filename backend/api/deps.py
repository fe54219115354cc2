"""Dependencies the routers ask for: settings, a database session, Redis, the task registry."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from redis import Redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from backend.api.ratelimit import RateLimits
from backend.config import Settings
from backend.db import utcnow
from backend.tasks import TaskRegistry


@dataclass
class AppContext:
    """What the API process built at start-up and shares across requests."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    redis: Redis
    tasks: TaskRegistry
    rate_limits: RateLimits
    #: The time as quotas see it (tests set their own clock).
    clock: Callable[[], datetime] = field(default=utcnow)


def get_context(request: Request) -> AppContext:
    return request.app.state.lanes


ContextDep = Annotated[AppContext, Depends(get_context)]


def get_settings_dep(context: ContextDep) -> Settings:
    return context.settings


def get_session(context: ContextDep) -> Iterator[Session]:
    with context.sessions() as session:
        yield session


def get_redis(context: ContextDep) -> Redis:
    return context.redis


def get_tasks(context: ContextDep) -> TaskRegistry:
    return context.tasks


def get_rate_limits(context: ContextDep) -> RateLimits:
    return context.rate_limits


def get_now(context: ContextDep) -> datetime:
    return context.clock()


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]
RedisDep = Annotated[Redis, Depends(get_redis)]
TasksDep = Annotated[TaskRegistry, Depends(get_tasks)]
RateLimitsDep = Annotated[RateLimits, Depends(get_rate_limits)]
#: The request's moment, from the app's clock: what quotas count by.
NowDep = Annotated[datetime, Depends(get_now)]
