"""Figures, the table that prints them, and the JSON that keeps them."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LATEST_JSON = RESULTS_DIR / "latest.json"


@dataclass
class Comparison:
    """One benchmark row: Lanes' figure and bare RQ's, per round, in `unit`.

    `better` says which way is good: "higher" for rates (jobs/s), "lower" for delays (ms).
    """

    name: str
    unit: str
    lanes: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    better: Literal["higher", "lower"] = "higher"

    @property
    def label(self) -> str:
        return f"{self.name} ({self.unit})"

    @property
    def lanes_median(self) -> float:
        return statistics.median(self.lanes)

    @property
    def bare_median(self) -> float:
        return statistics.median(self.bare)

    @property
    def ratio(self) -> float:
        """Lanes / bare RQ, 1.0 is parity: 0.5 is half as many per second, or half the delay."""
        return self.lanes_median / self.bare_median if self.bare_median else float("nan")

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "better": self.better,
            "lanes_median": round(self.lanes_median, 2),
            "bare_median": round(self.bare_median, 2),
            "ratio": round(self.ratio, 3),
            "lanes_rounds": [round(v, 2) for v in self.lanes],
            "bare_rounds": [round(v, 2) for v in self.bare],
            "notes": self.notes,
        }


def sides(rounds: int) -> Iterator[tuple[int, str]]:
    """(round, side) for every round and side, the side going first alternating by round, so
    neither always runs on a warmer machine."""
    for round_no in range(1, rounds + 1):
        for side in ("lanes", "bare") if round_no % 2 else ("bare", "lanes"):
            yield round_no, side


def environment() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "rq": version("rq"),
        "redis_py": version("redis"),
        "sqlalchemy": version("sqlalchemy"),
        "platform": platform.platform(),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "executable": sys.executable,
    }


def environment_line(env: dict[str, Any]) -> str:
    return (
        f"{env['cores']} cores, Python {env['python']}, rq {env['rq']}, "
        f"redis-py {env['redis_py']}, {env['platform']}, load {env['load_average_1m_at_start']} at start"
    )


def table(rows: list[Comparison]) -> str:
    width = max([len("benchmark"), *(len(row.label) for row in rows)]) + 2
    lines = [f"{'benchmark':<{width}}{'lanes':>12}{'bare rq':>14}{'ratio':>10}  better"]
    for row in rows:
        lines.append(
            f"{row.label:<{width}}{row.lanes_median:>12.1f}{row.bare_median:>14.1f}{row.ratio:>9.2f}x"
            f"  {row.better}"
        )
    return "\n".join(lines)


def write_json(
    rows: list[Comparison], *, env: dict[str, Any], options: dict[str, Any], path: Path = LATEST_JSON
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": env,
        "options": options,
        "results": [row.as_json() for row in rows],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
