"""Logging set-up shared by the processes: text lines, or one JSON object a line (`LANES_LOG_JSON=1`).

In JSON every record carries `timestamp` (ISO 8601, UTC), `level`, `logger` and `message`, plus the
fields a record was given (`extra=`): a job's state changes (`lanes.jobs`) add `job_id`, `task`,
`queue`, `status`, `attempt` and `duration_s`. RQ's own lines go through the same handler.
"""

from __future__ import annotations

import logging

from pythonjsonlogger.json import JsonFormatter

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_FIELDS = "{levelname}{name}{message}"
JSON_RENAMES = {"levelname": "level", "name": "logger"}


def configure_logging(level: str = "INFO", *, json: bool = False) -> None:
    """The root logger at `level`, writing text or JSON lines to stderr (set up once a process)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(json_formatter() if json else logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    elif json:
        for existing in root.handlers:
            existing.setFormatter(json_formatter())
    root.setLevel(level.upper())


def json_formatter() -> logging.Formatter:
    return JsonFormatter(JSON_FIELDS, style="{", rename_fields=JSON_RENAMES, timestamp=True)
