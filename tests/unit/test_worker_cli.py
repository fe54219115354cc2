"""`python -m worker`'s options pick the worker a user asked for: the mode, and in `fork` mode how
many jobs a work-horse runs before a new one is forked."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
from sqlalchemy import create_engine

from backend.config import Settings
from worker.__main__ import _child_args, build_worker, parse_args
from worker.standing import StandingHorseWorker
from worker.worker import LanesSimpleWorker, LanesWorker


def settings_with(**values: Any) -> Settings:
    return Settings.model_validate({"database_url": "sqlite://", "task_modules": "", **values})


@pytest.mark.parametrize(
    ("mode", "horse_jobs", "expected"),
    [
        ("fork", None, StandingHorseWorker),  # the default: 100 jobs a horse
        ("fork", 1, LanesWorker),  # a fork per job, as RQ's Worker
        ("fork", 7, StandingHorseWorker),
        ("simple", 7, LanesSimpleWorker),  # no horse at all
    ],
)
def test_the_mode_and_the_horse_count_choose_the_worker(
    mode: str, horse_jobs: int | None, expected: type
) -> None:
    settings = settings_with()
    engine = create_engine("sqlite://")
    worker = build_worker(
        settings,
        queues=["normal"],
        redis=fakeredis.FakeRedis(),
        engine=engine,
        mode=mode,
        horse_jobs=horse_jobs,
    )
    assert type(worker) is expected
    if isinstance(worker, StandingHorseWorker):
        assert worker.horse_jobs == (horse_jobs or settings.horse_jobs)
    engine.dispose()


def test_the_setting_gives_the_count_when_the_option_does_not() -> None:
    settings = settings_with(horse_jobs=1)
    engine = create_engine("sqlite://")
    worker = build_worker(settings, queues=["normal"], redis=fakeredis.FakeRedis(), engine=engine)
    assert type(worker) is LanesWorker
    engine.dispose()


def test_a_horse_count_below_one_is_refused_and_a_pool_passes_it_to_each_process(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--horse-jobs", "0"])
    assert "--horse-jobs must be at least 1" in capsys.readouterr().err
    args = parse_args(["high", "--horse-jobs", "5", "--processes", "2"])
    assert _child_args(args)[-2:] == ["--horse-jobs", "5"]
