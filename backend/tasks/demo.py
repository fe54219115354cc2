"""Example tasks that show the platform: echo, sleep with progress, flaky, always failing."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from backend.enums import Priority
from backend.tasks import progress, task


class EchoParams(BaseModel):
    """Any JSON object; it comes back as the result."""

    model_config = ConfigDict(extra="allow")


@task("demo.echo", params=EchoParams, priority=Priority.NORMAL, timeout_s=30)
def echo(params: EchoParams) -> dict[str, Any]:
    """Return the params it was given."""
    return params.model_dump(mode="json")


class SleepParams(BaseModel):
    seconds: float = Field(default=1.0, ge=0, le=3600, description="How long to sleep.")
    steps: int = Field(default=10, ge=1, le=1000, description="How many progress reports to make.")


@task("demo.sleep", params=SleepParams, priority=Priority.NORMAL, timeout_s=3700)
def sleep(params: SleepParams) -> dict[str, Any]:
    """Sleep for `seconds`, reporting progress in `steps` steps."""
    started = time.monotonic()
    for step in range(1, params.steps + 1):
        time.sleep(params.seconds / params.steps)
        progress(100 * step / params.steps, f"step {step}/{params.steps}")
    return {"slept_s": round(time.monotonic() - started, 3)}


class FlakyParams(BaseModel):
    failures: int = Field(default=2, ge=0, le=100, description="How many attempts fail first.")


class FlakyError(RuntimeError):
    """Raised by demo.flaky on purpose."""


@task("demo.flaky", params=FlakyParams, priority=Priority.NORMAL, timeout_s=30, max_retries=3)
def flaky(params: FlakyParams) -> dict[str, Any]:
    """Fail the first `failures` attempts, then succeed."""
    from backend.tasks.context import current_attempt

    attempt = current_attempt()
    if attempt <= params.failures:
        raise FlakyError(f"attempt {attempt} of {params.failures + 1} fails on purpose")
    return {"succeeded_on_attempt": attempt}


class FailParams(BaseModel):
    message: str = Field(default="demo.fail always fails", max_length=1000)


class DemoFailure(RuntimeError):
    """Raised by demo.fail, always."""


@task("demo.fail", params=FailParams, priority=Priority.LOW, timeout_s=30)
def fail(params: FailParams) -> None:
    """Always raise."""
    raise DemoFailure(params.message)
