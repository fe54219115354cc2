"""/api/v1/health: 200 when Redis, the database and at least one worker answer; 503 otherwise."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from backend.api.deps import RedisDep, SessionDep
from backend.health import check_health
from backend.schemas import HealthOut

router = APIRouter(prefix="/api/v1", tags=["health"])
liveness = APIRouter(tags=["health"])


@liveness.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers. Checks nothing else, so orchestrators never restart it for Redis."""
    return {"status": "ok"}


@router.get("/health", response_model=HealthOut, responses={503: {"model": HealthOut}})
def health(session: SessionDep, redis: RedisDep) -> JSONResponse:
    """Report whether Redis, the database and live workers are there, with the reasons if not."""
    result = check_health(session=session, redis=redis)
    body = HealthOut(
        status="healthy" if result.healthy else "unhealthy",
        redis=result.redis,
        database=result.database,
        workers=result.workers,
        reasons=result.reasons,
    )
    return JSONResponse(body.model_dump(), status_code=200 if result.healthy else 503)
