"""The bare-RQ side's job function: as little work as `demo.echo`, importable by `rq worker`."""

from __future__ import annotations

from typing import Any


def noop(**params: Any) -> dict[str, Any]:
    """Return the keyword arguments it was given, as `demo.echo` returns its params."""
    return params
