"""Figures, the table that prints them, the JSON that keeps them and the markdown table for the README.

Issue 11 sets a floor for some rows (`Floor`): a benchmark gives its rows theirs where it makes
them (`Comparison(..., floor=...)`); `FLOORS` names the rest by row name.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
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
#: Beside the JSON, with the same stem: `bench/results/latest.md` by default.
LATEST_MD = LATEST_JSON.with_suffix(".md")


@dataclass(frozen=True)
class Floor:
    """Issue 11's bar for one row, of one of three kinds:

    - `ratio`: Lanes / bare RQ at least `value` for a rate, at most `value` for a delay;
    - `extra`: Lanes at most `value` above bare RQ, in the row's unit (a delay);
    - `limit`: Lanes' own figure at most `value`, in the row's unit, whatever bare RQ does.
    """

    kind: Literal["ratio", "extra", "limit"]
    value: float

    @classmethod
    def ratio(cls, value: float) -> Floor:
        return cls("ratio", value)

    @classmethod
    def extra(cls, value: float) -> Floor:
        return cls("extra", value)

    @classmethod
    def limit(cls, value: float) -> Floor:
        return cls("limit", value)

    def met(self, row: Comparison) -> bool:
        if self.kind == "limit":
            return row.lanes_median <= self.value
        if self.kind == "extra":
            return row.lanes_median - row.bare_median <= self.value
        return row.ratio >= self.value if row.better == "higher" else row.ratio <= self.value

    def describe(self, row: Comparison) -> str:
        """The bar as the table shows it: `>= 0.50x`, `<= +2 ms`, `<= 2000 ms`."""
        if self.kind == "limit":
            return f"<= {self.value:g} {row.unit}"
        if self.kind == "extra":
            return f"<= +{self.value:g} {row.unit}"
        return f"{'>=' if row.better == 'higher' else '<='} {self.value:.2f}x"


@dataclass
class Comparison:
    """One benchmark row: Lanes' figure and bare RQ's, per round, in `unit`.

    `better` says which way is good: "higher" for rates (jobs/s), "lower" for delays (ms). `floor`
    is issue 11's bar for the row, where it sets one. A row with no bare figure (a target of
    Lanes' own) has no bare median nor ratio (NaN).
    """

    name: str
    unit: str
    lanes: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    better: Literal["higher", "lower"] = "higher"
    floor: Floor | None = None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.unit})"

    @property
    def lanes_median(self) -> float:
        return statistics.median(self.lanes)

    @property
    def bare_median(self) -> float:
        return statistics.median(self.bare) if self.bare else math.nan

    @property
    def ratio(self) -> float:
        """Lanes / bare RQ, 1.0 is parity: 0.5 is half as many per second, or half the delay."""
        return self.lanes_median / self.bare_median if self.bare_median else math.nan

    @property
    def floor_met(self) -> bool | None:
        """Whether the row clears its floor; None without one."""
        return None if self.floor is None else self.floor.met(self)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "better": self.better,
            "lanes_median": round(self.lanes_median, 2),
            "bare_median": _json_number(self.bare_median, 2),
            "ratio": _json_number(self.ratio, 3),
            "floor": None if self.floor is None else self.floor.describe(self),
            "floor_met": self.floor_met,
            "lanes_rounds": [round(v, 2) for v in self.lanes],
            "bare_rounds": [round(v, 2) for v in self.bare],
            "notes": self.notes,
        }


def _json_number(value: float, digits: int) -> float | None:
    return None if math.isnan(value) else round(value, digits)


#: Issue 11's floors for the rows whose benchmark does not set one itself, by a regular expression
#: their whole name matches. The submit and scheduler benchmarks set theirs where they make the rows.
FLOORS: dict[str, Floor] = {
    r"drain, \d+ forking workers?": Floor.ratio(1.0),  # default mode: at least a bare `rq worker`
    r"drain, \d+ simple workers?": Floor.ratio(0.9),  # fast mode: 0.9x a bare SimpleWorker
    r"enqueue to start, idle \w+ worker, p50": Floor.extra(2.0),  # at most 2 ms more than bare RQ
    r"\S+ [\d,]+ rows: .+ p95": Floor.limit(50.0),  # scale: every endpoint's p95 under 50 ms
}


def apply_floors(rows: list[Comparison], floors: dict[str, Floor] = FLOORS) -> list[Comparison]:
    """Give each row without a floor the first of `floors` whose pattern its name matches; the rows."""
    for row in rows:
        if row.floor is None:
            row.floor = next(
                (floor for pattern, floor in floors.items() if re.fullmatch(pattern, row.name)), None
            )
    return rows


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
    database = {"sqlite": ", Lanes on SQLite", "postgresql": ", Lanes on PostgreSQL"}.get(
        env.get("database", ""), ""
    )
    return (
        f"{env['cores']} cores, Python {env['python']}, rq {env['rq']}, "
        f"redis-py {env['redis_py']}, {env['platform']}, load {env['load_average_1m_at_start']} at start"
        f"{database}"
    )


def table(rows: list[Comparison]) -> str:
    width = max([len("benchmark"), *(len(row.label) for row in rows)]) + 2
    lines = [f"{'benchmark':<{width}}{'lanes':>12}{'bare rq':>14}{'ratio':>10}  better  floor        met"]
    for row in rows:
        floor = row.floor.describe(row) if row.floor else ""
        lines.append(
            f"{row.label:<{width}}{row.lanes_median:>12.1f}{_figure(row.bare_median):>14}"
            f"{_ratio(row.ratio):>10}  {row.better:<6}  {floor:<11}  {_met(row.floor_met)}".rstrip()
        )
    return "\n".join(lines)


def markdown(rows: list[Comparison], *, env: dict[str, Any], command: str, rounds: int) -> str:
    """The same figures as `table`, as a markdown table for the README, with the environment and
    the command that made them."""
    lines = [
        "| benchmark | Lanes | bare RQ | ratio | floor (issue 11) | met? |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        floor = row.floor.describe(row).replace("<=", "≤").replace(">=", "≥") if row.floor else ""
        lines.append(
            f"| {row.label} | {row.lanes_median:.1f} | {_figure(row.bare_median)} | {_ratio(row.ratio)}"
            f" | {floor} | {_met(row.floor_met)} |"
        )
    lines += [
        "",
        f"{environment_line(env)}; median of {rounds} round(s); ratio = Lanes / bare RQ."
        f" Made by `{command}`.",
    ]
    return "\n".join(lines) + "\n"


def _figure(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.1f}"


def _ratio(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}x"


def _met(met: bool | None) -> str:
    return "" if met is None else "yes" if met else "no"


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


def write_markdown(
    rows: list[Comparison], *, env: dict[str, Any], command: str, rounds: int, path: Path = LATEST_MD
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(rows, env=env, command=command, rounds=rounds))
    return path
