"""Tasks for the crash stories: a first attempt long enough to be killed in, and a task that kills
its own work-horse."""

from __future__ import annotations

import os
import signal
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


class NoParams(BaseModel):
    pass


@task("tests.kill_own_horse", params=NoParams, timeout_s=60)
def kill_own_horse(params: NoParams) -> None:
    """Die by SIGKILL in every attempt, as a task the OOM killer takes each time would."""
    os.kill(os.getpid(), signal.SIGKILL)


@task("tests.die_on_first_attempt", params=NoParams, timeout_s=60)
def die_on_first_attempt(params: NoParams) -> dict[str, Any]:
    """Take the process that runs it down by SIGKILL on the first attempt; later attempts return."""
    attempt = current_attempt()
    if attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"attempt": attempt, "pid": os.getpid()}


def leave_a_mark(job: Any, connection: Any, *args: Any) -> None:
    """Not a task: what a forged job hash names as its callback. It must never run."""
    connection.set("forged-callback-ran", job.id)
