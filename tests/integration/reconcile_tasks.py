"""A task for the reconciler's stories: its first attempt runs long enough to be killed in."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, Field

from backend.tasks import task
from backend.tasks.context import current_attempt

#: What to put in LANES_TASK_MODULES so the API and the workers know the task.
MODULE = __name__


class SleepFirstParams(BaseModel):
    seconds: float = Field(default=60, ge=0, le=600, description="How long the first attempt sleeps.")


@task("tests.sleep_on_first_attempt", params=SleepFirstParams, timeout_s=600)
def sleep_on_first_attempt(params: SleepFirstParams) -> dict[str, Any]:
    """Sleep on the first attempt only; every later attempt returns at once."""
    attempt = current_attempt()
    if attempt == 1:
        time.sleep(params.seconds)
    return {"attempt": attempt}
