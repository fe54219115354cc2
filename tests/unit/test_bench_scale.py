"""The scale benchmark's rows: one deterministic population, written in growing random samples, with
the mix its README promises; and the table it prints."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from backend.enums import JobStatus
from bench import scale, scale_data
from bench.report import Comparison

NOW = datetime(2026, 12, 11, 12, 0, tzinfo=UTC)


def test_a_row_is_a_function_of_its_place_in_the_population() -> None:
    assert scale_data.job_row(17, 1000, NOW) == scale_data.job_row(17, 1000, NOW)
    assert scale_data.job_row(17, 1000, NOW)["id"] != scale_data.job_row(18, 1000, NOW)["id"]


def test_each_step_adds_a_sample_of_the_rows_not_yet_written_until_all_are() -> None:
    steps = [
        (size, [row for chunk in chunks for row in chunk])
        for size, chunks in scale_data.stages([300, 100], NOW)
    ]

    assert [(size, len(rows)) for size, rows in steps] == [(100, 100), (300, 200)]
    ids = [row["id"] for _, rows in steps for row in rows]
    assert len(set(ids)) == 300
    assert {row["id"] for row in (scale_data.job_row(k, 300, NOW) for k in range(300))} == set(ids)


def test_a_tenth_of_the_rows_is_queued_and_the_rest_mostly_succeeded() -> None:
    rows = [scale_data.job_row(k, 20_000, NOW) for k in range(20_000)]
    statuses = Counter(row["status"] for row in rows)

    assert set(statuses) <= {status.value for status in JobStatus}
    assert 0.09 < statuses["queued"] / len(rows) < 0.11
    assert statuses["succeeded"] > 0.75 * len(rows) and statuses["started"] == scale_data.RUNNING
    assert all(row["created_at"] <= NOW for row in rows)
    assert {row["tenant_id"] for row in rows} == {
        None if name is None else scale_data.tenant_id(name) for name in scale_data.TENANTS
    }


def test_the_scale_table_shows_p50_and_p95_per_read_and_marks_a_p95_over_the_target() -> None:
    def row(database: str, rows: int, endpoint: str, p50: float, p95: float) -> Comparison:
        notes = {"target_ms": 50.0, "database": database, "rows": rows, "endpoint": endpoint}
        return Comparison("x", "ms", lanes=[p95], notes={**notes, "p50_ms": p50, "p95_ms": p95})

    printed = scale.table(
        [row("sqlite", 10_000, "GET /jobs", 3.0, 4.5), row("sqlite", 1_000_000, "GET /jobs", 40.0, 61.2)]
    ).splitlines()

    assert "sqlite 10k" in printed[0] and "sqlite 1M" in printed[0]
    assert (
        printed[1].startswith("GET /jobs") and "3.0 /   4.5 " in printed[1] and "40.0 /  61.2!" in printed[1]
    )


def test_percentiles_are_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]

    assert (scale.percentile(values, 0.5), scale.percentile(values, 0.95)) == (50.0, 95.0)
    assert scale.percentile([7.0], 0.95) == 7.0
