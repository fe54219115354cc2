"""/api/v1/queues, /api/v1/queues/stats and /api/v1/workers: what the queues and workers are doing."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query

from backend import control, observe
from backend.api.auth import CallerDep, PlatformAdminDep, get_caller
from backend.api.control import CancelReport
from backend.api.deps import NowDep, RedisDep, SessionDep, SettingsDep
from backend.health import live_worker_count
from backend.schemas import ErrorOut, QueueControlOut, QueueOut, QueuesOut, StatsOut, WorkerOut

router = APIRouter(prefix="/api/v1", tags=["queues and workers"], dependencies=[Depends(get_caller)])

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 403, 404, 413, 422, 429, 503)
}
QueueName = Annotated[str, Path(max_length=64)]


@router.get("/queues", response_model=QueuesOut, responses=ERRORS)
def list_queues(session: SessionDep, redis: RedisDep, caller: CallerDep) -> QueuesOut:
    """Count each queue's jobs: RQ's lists and registries (platform admins), and SQL rows by status."""
    sql = observe.sql_counts(session, tenant_id=caller.scope)
    rq = observe.rq_counts(redis) if caller.platform_admin else {}
    names = list(observe.ALL_QUEUES) + sorted(set(sql) - set(observe.ALL_QUEUES))
    paused = observe.paused_queues(redis)
    return QueuesOut(
        queues=[
            QueueOut(name=name, rq=rq.get(name), sql=sql.get(name), paused=name in paused) for name in names
        ],
        workers=live_worker_count(redis),
    )


@router.post("/queues/{name}/pause", response_model=QueueControlOut, responses=ERRORS)
def pause_queue(name: QueueName, redis: RedisDep, caller: PlatformAdminDep) -> QueueControlOut:
    """Pause a queue: workers stop taking its jobs within a poll; submits are still accepted (admins)."""
    observe.pause(redis, name, paused=True)
    return QueueControlOut(name=name, paused=True)


@router.post("/queues/{name}/resume", response_model=QueueControlOut, responses=ERRORS)
def resume_queue(name: QueueName, redis: RedisDep, caller: PlatformAdminDep) -> QueueControlOut:
    """Resume a paused queue: workers take its jobs again within a poll (platform admins)."""
    observe.pause(redis, name, paused=False)
    return QueueControlOut(name=name, paused=False)


@router.post("/queues/{name}/empty", response_model=CancelReport, responses=ERRORS)
def empty_queue(
    name: QueueName, session: SessionDep, redis: RedisDep, settings: SettingsDep, caller: PlatformAdminDep
) -> CancelReport:
    """Cancel every job waiting on a queue: gone from Redis, `cancelled` in SQL (platform admins)."""
    report = control.empty_queue(session=session, redis=redis, queue=name, by=caller.label, settings=settings)
    return CancelReport.of(report)


@router.get("/queues/stats", response_model=StatsOut, responses=ERRORS)
def queue_stats(
    session: SessionDep,
    caller: CallerDep,
    now: NowDep,
    window_s: Annotated[int, Query(ge=60, le=7 * 86_400, description="How far back to look.")] = 3600,
    bucket_s: Annotated[int, Query(ge=10, le=86_400, description="Throughput bucket width.")] = 60,
) -> StatsOut:
    """Throughput per bucket, and wait and run time p50/p95, per queue, over the last `window_s`."""
    stats = observe.queue_stats(
        session, tenant_id=caller.scope, now=now, window_s=window_s, bucket_s=min(bucket_s, window_s)
    )
    return StatsOut.model_validate(stats)


@router.get("/workers", response_model=list[WorkerOut], responses=ERRORS)
def list_workers(redis: RedisDep, caller: PlatformAdminDep) -> list[WorkerOut]:
    """List every registered worker: host, pid, queues, state, current job, counters (platform admins)."""
    return [WorkerOut.model_validate(worker) for worker in observe.workers(redis)]
