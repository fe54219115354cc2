"""GET /metrics: Prometheus's text format, for a platform admin's key (Prometheus sends it as a bearer
token: `authorization: {credentials: <key>}` in the scrape config). The numbers span every tenant."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from backend.api.auth import PlatformAdminDep
from backend.api.deps import ContextDep
from backend.metrics import LanesCollector
from backend.schemas import ErrorOut

router = APIRouter(tags=["metrics"])

RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {CONTENT_TYPE_LATEST: {}}},
    **{code: {"model": ErrorOut} for code in (401, 403, 429, 503)},
}


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}},
        **{c: {"model": ErrorOut} for c in (401, 403, 429, 503)},
    },
)
def metrics(context: ContextDep, caller: PlatformAdminDep) -> Response:
    """Export Prometheus metrics: queues, jobs by status, workers, counters and time histograms."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LanesCollector(sessions=context.sessions, redis=context.redis))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
