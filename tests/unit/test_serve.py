"""`make api` starts the API processes the setting asks for, or one per core it may use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backend.config import Settings
from backend.serve import process_count


def test_the_setting_is_the_count_and_zero_means_one_per_usable_core(monkeypatch: pytest.MonkeyPatch) -> None:
    assert process_count(Settings.model_validate({"api_processes": 3})) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5}, raising=False)
    assert process_count(Settings.model_validate({"api_processes": 0})) == 2


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "200000 100000\n"}, 2),  # a container given 2 CPUs (cgroup v2)
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: a process for the half too
        ({"cpu.max": "max 100000\n"}, 8),  # no limit
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, 8),
        ({"cpu.max": "5000 100000\n"}, 1),  # a twentieth of a CPU still gets one process
        ({"cpu.max": "6400000 100000\n"}, 8),  # a quota above the cores it may run on
        ({}, 8),  # no control group to read
    ],
)
def test_zero_counts_no_more_cores_than_a_containers_cpu_limit_gives(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, files: dict[str, str], expected: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)

    assert process_count(Settings.model_validate({"api_processes": 0}), cgroup=tmp_path) == expected
