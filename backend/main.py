"""The FastAPI app: `create_app()` wires routers, middleware and error handlers.

Connections are built in the lifespan (or handed in by tests), never at import time.
`uvicorn backend.main:app` serves the app made from the environment's settings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

from fastapi import FastAPI
from redis import Redis

from backend import __version__
from backend.api import control, credits, health, jobs, metrics, queues, schedules, tasks, webhooks
from backend.api.body_guard import BodyGuard
from backend.api.dashboard import mount_dashboard
from backend.api.deps import AppContext
from backend.api.errors import install_error_handlers
from backend.api.ratelimit import RateLimitHeaders, RateLimits
from backend.config import Settings, get_settings
from backend.db import engine_for, make_sessionmaker, utcnow
from backend.logs import configure_logging
from backend.queues import redis_for
from backend.tasks import registry
from backend.tenants import refuse_demo_keys


def create_app(
    settings: Settings | None = None,
    *,
    redis: Redis | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> FastAPI:
    """The Lanes API for `settings` (the environment's when None).

    `redis` lets tests hand in a client, and `clock` a time of their own for quotas.
    """
    settings = settings or get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    registry.load_modules(settings.task_module_names())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = engine_for(settings)
        if settings.env == "production":
            refuse_demo_keys(engine)
        client = redis if redis is not None else redis_for(settings)
        app.state.lanes = AppContext(
            settings=settings,
            engine=engine,
            sessions=make_sessionmaker(engine),
            redis=client,
            tasks=registry,
            rate_limits=RateLimits(settings, client),
            clock=clock,
        )
        try:
            yield
        finally:
            if redis is None:
                client.close()
            engine.dispose()

    app = FastAPI(
        title="Lanes",
        version=__version__,
        summary="Jobs over HTTP, on Redis and RQ, with every job's life in SQL.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(RateLimitHeaders)
    app.add_middleware(
        BodyGuard, max_body_bytes=settings.max_body_bytes, max_json_depth=settings.max_json_depth
    )
    mount_dashboard(app)
    for router in (
        control.router,
        jobs.router,
        schedules.router,
        tasks.router,
        credits.router,
        webhooks.router,
        queues.router,
        metrics.router,
        health.router,
        health.liveness,
    ):
        app.include_router(router)
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn backend.main:app` builds the app on first access, not at import time.
    if name == "app":
        globals()["app"] = created = create_app()
        return created
    raise AttributeError(name)
