"""`make api` starts the API processes the setting asks for, or one per core it may use."""

from __future__ import annotations

import os

import pytest

from backend.config import Settings
from backend.serve import process_count


def test_the_setting_is_the_count_and_zero_means_one_per_usable_core(monkeypatch: pytest.MonkeyPatch) -> None:
    assert process_count(Settings.model_validate({"api_processes": 3})) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5}, raising=False)
    assert process_count(Settings.model_validate({"api_processes": 0})) == 2
