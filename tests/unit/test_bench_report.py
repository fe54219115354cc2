"""`make bench` writes its figures as a markdown table for the README, each row beside issue 11's floor."""

from __future__ import annotations

import json
from pathlib import Path

from bench.__main__ import parse_args, sizes_from
from bench.report import (
    Comparison,
    Floor,
    apply_floors,
    environment_line,
    markdown,
    write_json,
    write_markdown,
)

ENV = {
    "cores": 2,
    "python": "3.11.7",
    "rq": "3.0.0",
    "redis_py": "8.1.0",
    "platform": "Linux",
    "load_average_1m_at_start": 0.5,
}


def rows() -> list[Comparison]:
    return [
        Comparison("submit via API", "jobs/s", lanes=[500, 600, 700], bare=[1000], floor=Floor.ratio(0.5)),
        Comparison("submit batch via API", "jobs/s", lanes=[1000], bare=[4000], floor=Floor.ratio(0.5)),
        Comparison(
            "enqueue to start, idle simple worker, p50", "ms", lanes=[3.5], bare=[2.0], better="lower"
        ),
        Comparison("all 1000 on the queue after due", "ms", lanes=[2500], bare=[900], better="lower"),
        Comparison("sqlite 10,000 rows: GET /jobs p95", "ms", lanes=[12.0], better="lower"),
        Comparison("Redis commands per submit", "commands", lanes=[9], bare=[6], better="lower"),
    ]


def test_each_row_is_judged_against_its_floor() -> None:
    api, batch, latency, firing, scaled, commands = apply_floors(rows())
    firing.floor = Floor.limit(2000)

    assert (api.floor_met, batch.floor_met) == (True, False)  # 0.60x >= 0.50x; 0.25x is not
    assert latency.floor == Floor.extra(2.0) and latency.floor_met is True  # 1.5 ms more than bare
    assert firing.floor_met is False  # 2.5 s, over 2 s
    assert scaled.floor == Floor.limit(50.0) and scaled.floor_met is True  # no bare side at all
    assert commands.floor is None and commands.floor_met is None


def test_the_markdown_table_has_every_figure_of_the_printed_one_and_how_it_was_made() -> None:
    text = markdown(apply_floors(rows()), env=ENV, command="python -m bench --quick", rounds=3)

    lines = text.splitlines()
    assert lines[0] == "| benchmark | Lanes | bare RQ | ratio | floor (issue 11) | met? |"
    assert "| submit via API (jobs/s) | 600.0 | 1000.0 | 0.60x | ≥ 0.50x | yes |" in lines
    assert "| submit batch via API (jobs/s) | 1000.0 | 4000.0 | 0.25x | ≥ 0.50x | no |" in lines
    assert "| enqueue to start, idle simple worker, p50 (ms) | 3.5 | 2.0 | 1.75x | ≤ +2 ms | yes |" in lines
    assert "| sqlite 10,000 rows: GET /jobs p95 (ms) | 12.0 | — | — | ≤ 50 ms | yes |" in lines
    assert "| Redis commands per submit (commands) | 9.0 | 6.0 | 1.50x |  |  |" in lines
    assert lines[-1].startswith("2 cores, Python 3.11.7, rq 3.0.0")
    assert "median of 3 round(s)" in lines[-1] and "`python -m bench --quick`" in lines[-1]


def test_a_run_says_which_database_lanes_used_and_takes_postgresql_on_request() -> None:
    assert environment_line({**ENV, "database": "postgresql"}).endswith(
        "load 0.5 at start, Lanes on PostgreSQL"
    )
    assert environment_line({**ENV, "database": "sqlite"}).endswith("Lanes on SQLite")
    assert sizes_from(parse_args([])).postgres is None
    server = "postgresql+psycopg://someone@db.example:5432/postgres"
    assert sizes_from(parse_args(["--database", "postgresql", "--postgres", server])).postgres == server


def test_the_markdown_and_the_json_are_written_side_by_side(tmp_path: Path) -> None:
    table = apply_floors(rows())

    json_path = write_json(table, env=ENV, options={}, path=tmp_path / "results" / "latest.json")
    md_path = write_markdown(
        table, env=ENV, command="python -m bench", rounds=1, path=json_path.with_suffix(".md")
    )

    assert md_path == tmp_path / "results" / "latest.md"
    assert md_path.read_text().count("\n| ") == len(table) + 1  # the separator line, then a line a row
    results = json.loads(json_path.read_text())["results"]
    assert results[0]["floor"] == ">= 0.50x" and results[0]["floor_met"] is True
    assert results[4]["bare_median"] is None and results[4]["ratio"] is None
