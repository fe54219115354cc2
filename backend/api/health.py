"""/api/v1/health: 200 when Redis, the database and at least one worker answer, and a scheduler runs
where schedules are enabled (`healthy`, or `degraded` with warnings); 503 otherwise, with the reasons."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from backend.api.deps import RedisDep, SessionDep, SettingsDep
from backend.health import check_health, check_ready
from backend.schemas import HealthOut, SchedulerHealthOut

router = APIRouter(prefix="/api/v1", tags=["health"])
liveness = APIRouter(tags=["health"])


@liveness.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers. Checks nothing else, so orchestrators never restart it for Redis."""
    return {"status": "ok"}


@liveness.get("/readyz", responses={503: {"description": "Redis or the database does not answer."}})
def readyz(session: SessionDep, redis: RedisDep) -> JSONResponse:
    """Readiness: Redis and the database answer, so this process can take requests (no key needed)."""
    reasons = check_ready(session=session, redis=redis)
    body = {"status": "not ready" if reasons else "ready", "reasons": reasons}
    return JSONResponse(body, status_code=503 if reasons else 200)


@router.get("/health", response_model=HealthOut, responses={503: {"model": HealthOut}})
def health(session: SessionDep, redis: RedisDep, settings: SettingsDep) -> JSONResponse:
    """Report whether Redis, the database, live workers and the scheduler are there, and why not."""
    result = check_health(session=session, redis=redis, queue_age_s=settings.health_queue_age_s)
    body = HealthOut(
        status=result.status,
        redis=result.redis,
        database=result.database,
        workers=result.workers,
        scheduler=SchedulerHealthOut.model_validate(result.scheduler),
        reasons=result.reasons,
        warnings=result.warnings,
        redis_latency_ms=result.redis_latency_ms,
        redis_memory_bytes=result.redis_memory_bytes,
        oldest_queued_age_s=result.oldest_queued_age_s,
        mirror_pending=result.mirror_pending,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if result.healthy else 503)
