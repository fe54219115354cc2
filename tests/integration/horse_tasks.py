"""A task for the standing-horse stories: it says which process ran it."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel

from backend.tasks import task

#: What to put in LANES_TASK_MODULES so the API and the workers know the task.
MODULE = __name__


class NoParams(BaseModel):
    pass


@task("tests.whose_pid", params=NoParams, timeout_s=60)
def whose_pid(params: NoParams) -> dict[str, Any]:
    """Return the pid of the process that ran the job: the work-horse's, in a forking worker."""
    return {"pid": os.getpid()}
