"""/api/v1/tasks: what can be run, and the parameters each task takes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from backend.api.auth import get_caller
from backend.api.deps import SettingsDep, TasksDep
from backend.schemas import ErrorOut, TaskOut

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"], dependencies=[Depends(get_caller)])

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (401, 429, 503)}


@router.get("", response_model=list[TaskOut], responses=ERRORS)
def list_tasks(tasks: TasksDep, settings: SettingsDep) -> list[TaskOut]:
    """List the registered tasks with their parameters' JSON Schema."""
    return [
        TaskOut(
            name=t.name,
            description=t.description,
            priority=t.priority,
            timeout_s=t.timeout_s,
            max_retries=settings.default_max_retries if t.max_retries is None else t.max_retries,
            params_schema=t.params_schema(),
        )
        for t in tasks.all()
    ]
