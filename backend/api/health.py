"""/api/v1/health: 200 when Redis, the database and at least one worker answer, and a scheduler runs
where schedules are enabled; 503 otherwise, with the reasons."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from backend.api.deps import RedisDep, SessionDep
from backend.health import check_health
from backend.schemas import HealthOut, SchedulerHealthOut

router = APIRouter(prefix="/api/v1", tags=["health"])
liveness = APIRouter(tags=["health"])


@liveness.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers. Checks nothing else, so orchestrators never restart it for Redis."""
    return {"status": "ok"}


@router.get("/health", response_model=HealthOut, responses={503: {"model": HealthOut}})
def health(session: SessionDep, redis: RedisDep) -> JSONResponse:
    """Report whether Redis, the database, live workers and the scheduler are there, and why not."""
    result = check_health(session=session, redis=redis)
    body = HealthOut(
        status="healthy" if result.healthy else "unhealthy",
        redis=result.redis,
        database=result.database,
        workers=result.workers,
        scheduler=SchedulerHealthOut.model_validate(result.scheduler),
        reasons=result.reasons,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if result.healthy else 503)
