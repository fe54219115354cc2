"""Dependencies the routers ask for: settings, a database session, Redis, the task registry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated

import anyio
import anyio.to_thread
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


# These dependencies are `async def`: FastAPI runs a plain `def` dependency in its thread pool, and
# each such hop (two thread wake-ups) costs more than the function itself, many times more on a busy
# machine. What does I/O stays off the event loop: the caller's key (`get_caller`) is a plain `def`.


async def get_context(request: Request) -> AppContext:
    return request.app.state.lanes


ContextDep = Annotated[AppContext, Depends(get_context)]


async def get_settings_dep(context: ContextDep) -> Settings:
    return context.settings


async def get_session(context: ContextDep) -> AsyncIterator[Session]:
    """The request's session. Making one does no I/O; closing one does only while it still holds a
    transaction (its rollback), and only then is the close sent to the thread pool."""
    session = context.sessions()
    try:
        yield session
    finally:
        with anyio.CancelScope(shield=True):
            if session.in_transaction():
                # A limiter of its own, as FastAPI's: a close waiting for a busy pool could deadlock.
                await anyio.to_thread.run_sync(session.close, limiter=anyio.CapacityLimiter(1))
            else:
                session.close()


async def get_redis(context: ContextDep) -> Redis:
    return context.redis


async def get_tasks(context: ContextDep) -> TaskRegistry:
    return context.tasks


async def get_now(context: ContextDep) -> datetime:
    return context.clock()


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]
RedisDep = Annotated[Redis, Depends(get_redis)]
TasksDep = Annotated[TaskRegistry, Depends(get_tasks)]
#: The request's moment, from the app's clock: what quotas count by.
NowDep = Annotated[datetime, Depends(get_now)]
