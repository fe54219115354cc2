"""`progress(percent, stage)`: how a running task says how far it has got.

The worker installs a sink that throttles and writes to the job's meta in Redis and its SQL row.
Outside a worker (a task called directly in a test) the call is accepted and does nothing.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressSink = Callable[[int, str | None], None]

_sink: ProgressSink | None = None


def set_progress_sink(sink: ProgressSink | None) -> None:
    """Install where `progress()` reports to; the worker does this in each work-horse."""
    global _sink
    _sink = sink


def progress(percent: float, stage: str | None = None) -> None:
    """Report that the current job is `percent` (0–100) done, optionally naming its `stage`."""
    value = int(max(0, min(100, round(percent))))
    if stage is not None:
        stage = str(stage)[:200]
    if _sink is not None:
        _sink(value, stage)
