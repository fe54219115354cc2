"""Schedules over HTTP: kept in SQL, validated like a submit, fire times in their own time zone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backend import cron as cron_module
from backend.cron import next_fire_times, validate_cron

SCHEDULES = "/api/v1/schedules"


def a_schedule(**overrides: Any) -> dict[str, Any]:
    return {"name": "nightly sleep", "task": "demo.sleep", "params": {"seconds": 1}, "cron": "0 3 * * *"} | (
        overrides
    )


@pytest.fixture
def tokyo_host(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time zone is Asia/Tokyo for the test."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# -- stories -------------------------------------------------------------------------------------


def test_a_created_schedule_is_stored_with_its_next_fire_times(api: TestClient) -> None:
    response = api.post(SCHEDULES, json=a_schedule(timezone="Europe/Paris", priority="high"))

    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["Location"] == f"{SCHEDULES}/{body['id']}"
    assert body["task"] == "demo.sleep"
    assert body["params"] == {"seconds": 1, "steps": 10}  # as a submit stores them: defaults filled in
    assert (body["priority"], body["timezone"], body["enabled"]) == ("high", "Europe/Paris", True)
    assert body["last_run_at"] is None
    fire_times = [datetime.fromisoformat(t) for t in body["next_fire_times"]]
    assert len(fire_times) == 5
    assert fire_times == sorted(fire_times) and fire_times[0] > datetime.now(UTC)
    assert datetime.fromisoformat(body["next_run_at"]) == fire_times[0]
    assert api.get(f"{SCHEDULES}/{body['id']}").json() == body


def test_the_task_defaults_apply_when_the_schedule_names_none(api: TestClient) -> None:
    body = api.post(SCHEDULES, json=a_schedule(task="demo.fail", params={})).json()

    assert (body["priority"], body["max_retries"]) == ("low", 3)


def test_schedules_are_listed_newest_first_a_page_at_a_time(api: TestClient) -> None:
    ids = [api.post(SCHEDULES, json=a_schedule(name=f"s{i}")).json()["id"] for i in range(3)]

    first = api.get(SCHEDULES, params={"limit": 2}).json()
    second = api.get(SCHEDULES, params={"limit": 2, "cursor": first["next_cursor"]}).json()

    assert [s["id"] for s in first["items"] + second["items"]] == ids[::-1]
    assert second["next_cursor"] is None


def test_a_patch_changes_only_what_it_names_and_moves_the_next_run(api: TestClient) -> None:
    created = api.post(SCHEDULES, json=a_schedule()).json()

    response = api.patch(
        f"{SCHEDULES}/{created['id']}", json={"cron": "*/15 * * * *", "params": {"seconds": 2}}
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["cron"], body["params"], body["name"]) == (
        "*/15 * * * *",
        {"seconds": 2, "steps": 10},
        "nightly sleep",
    )
    fire_times = [datetime.fromisoformat(t) for t in body["next_fire_times"]]
    assert [b - a for a, b in pairwise(fire_times)] == [timedelta(minutes=15)] * 4
    assert datetime.fromisoformat(body["next_run_at"]) == fire_times[0]


def test_a_disabled_schedule_has_no_next_run_until_it_is_enabled_again(api: TestClient) -> None:
    schedule_id = api.post(SCHEDULES, json=a_schedule()).json()["id"]

    disabled = api.patch(f"{SCHEDULES}/{schedule_id}", json={"enabled": False}).json()
    enabled = api.patch(f"{SCHEDULES}/{schedule_id}", json={"enabled": True}).json()

    assert (disabled["enabled"], disabled["next_run_at"], disabled["next_fire_times"]) == (False, None, [])
    assert enabled["enabled"] is True and enabled["next_run_at"] is not None
    assert len(enabled["next_fire_times"]) == 5


def test_a_bad_patch_changes_nothing(api: TestClient) -> None:
    created = api.post(SCHEDULES, json=a_schedule()).json()

    response = api.patch(
        f"{SCHEDULES}/{created['id']}", json={"cron": "*/5 * * * *", "params": {"seconds": -1}}
    )

    assert response.status_code == 422 and response.json()["code"] == "invalid_params"
    assert api.get(f"{SCHEDULES}/{created['id']}").json()["cron"] == "0 3 * * *"


def test_a_deleted_schedule_is_gone(api: TestClient) -> None:
    schedule_id = api.post(SCHEDULES, json=a_schedule()).json()["id"]

    assert api.delete(f"{SCHEDULES}/{schedule_id}").status_code == 204
    assert api.get(f"{SCHEDULES}/{schedule_id}").json()["code"] == "schedule_not_found"
    assert api.get(SCHEDULES).json()["items"] == []


@pytest.mark.parametrize("method", ["get", "patch", "delete"])
@pytest.mark.parametrize("schedule_id", ["0123456789abcdef", "not a valid id!"])
def test_an_unknown_schedule_is_404(api: TestClient, method: str, schedule_id: str) -> None:
    kwargs: dict[str, Any] = {"json": {"enabled": False}} if method == "patch" else {}
    response = api.request(method.upper(), f"{SCHEDULES}/{schedule_id}", **kwargs)

    assert response.status_code == 404
    assert response.json()["code"] == "schedule_not_found"


# -- what is refused -----------------------------------------------------------------------------


BAD_SCHEDULES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown task", {"task": "no.such.task"}, "unknown_task"),
    ("params the model refuses", {"params": {"seconds": -1}}, "invalid_params"),
    ("params not an object", {"params": [1]}, "invalid_params"),
    ("too many max_retries", {"max_retries": 26}, "invalid_max_retries"),
    ("unknown priority", {"priority": "urgent"}, "invalid_priority"),
    ("a cron that never fires", {"cron": "0 0 31 2 *"}, "invalid_cron"),
    ("a cron with six fields", {"cron": "0 0 * * * *"}, "invalid_cron"),
    ("an unknown time zone", {"timezone": "Mars/Olympus_Mons"}, "invalid_timezone"),
    ("an offset, not a zone", {"timezone": "+02:00"}, "invalid_timezone"),
    ("a path, not a zone", {"timezone": "../../etc/passwd"}, "invalid_timezone"),
    ("no name", {"name": ""}, "invalid_name"),
    ("unknown field", {"colour": "red"}, "unknown_field"),
]


@pytest.mark.parametrize(("case", "change", "code"), BAD_SCHEDULES, ids=[c[0] for c in BAD_SCHEDULES])
def test_a_bad_schedule_gets_a_clear_422_and_is_not_stored(
    api: TestClient, case: str, change: dict[str, Any], code: str
) -> None:
    response = api.post(SCHEDULES, json=a_schedule(**change))

    assert response.status_code == 422, response.text
    assert response.json()["code"] == code
    assert response.json()["detail"]
    assert api.get(SCHEDULES).json()["items"] == []


def test_a_cron_that_never_fires_is_refused_with_a_reason(api: TestClient) -> None:
    response = api.post(SCHEDULES, json=a_schedule(cron="0 0 31 2 *"))

    assert response.json() == {
        "detail": "cron '0 0 31 2 *' never fires: no date matches it within 5 years",
        "code": "invalid_cron",
    }


VALID_CRONS = [
    "* * * * *",
    "*/15 * * * *",
    "0 9 * * 1-5",
    "0 9 * * mon-fri",
    "30 8 1,15 * *",
    "0 0 1 jan,jul *",
    "0 12 * JAN-MAR sun",
    "5-55/10 0-6 * * *",
    "0 0 29 2 *",
    "  0   9 * *  *  ",
]
INVALID_CRONS = [
    "",
    "0 9 * *",
    "0 0 * * * *",
    "@daily",
    "60 * * * *",
    "0 24 * * *",
    "0 0 32 * *",
    "0 0 * 13 *",
    "0 0 * * 8",
    "0 0 * foo *",
    "*/0 * * * *",
    "0 0 31 2 *",
    "0 0 30 2 *",
    "0 0 31 4,6,9,11 *",
]


@pytest.mark.parametrize("expr", VALID_CRONS)
def test_five_field_crons_with_steps_ranges_lists_and_names_are_accepted(expr: str) -> None:
    assert validate_cron(expr) == " ".join(expr.split())


@pytest.mark.parametrize("expr", INVALID_CRONS)
def test_malformed_or_never_firing_crons_are_refused(api: TestClient, expr: str) -> None:
    response = api.post(SCHEDULES, json=a_schedule(cron=expr))

    assert response.status_code == 422, response.text
    assert response.json()["code"] in {"invalid_cron"}, response.json()


# -- time zones ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (datetime(2026, 7, 1, 12, 0, tzinfo=UTC), datetime(2026, 7, 1, 13, 0, tzinfo=UTC)),  # EDT
        (datetime(2026, 1, 15, 12, 0, tzinfo=UTC), datetime(2026, 1, 15, 14, 0, tzinfo=UTC)),  # EST
    ],
    ids=["summer", "winter"],
)
def test_nine_in_new_york_is_13_or_14_utc_by_the_date_whatever_the_host_zone(
    tokyo_host: None, after: datetime, expected: datetime
) -> None:
    assert time.strftime("%Z") == "JST"

    assert next_fire_times("0 9 * * *", "America/New_York", after=after, n=1) == [expected]


@pytest.mark.parametrize("cron", ["*/15 * * * *", "30 1 * * *", "0 9 * * mon-fri"])
def test_kept_fire_times_are_the_times_computed_afresh_from_any_moment(cron: str) -> None:
    # Every 7 minutes across the night the clocks went back in Paris, forward, then back again.
    moments = [datetime(2026, 10, 24, 22, 0, tzinfo=UTC) + timedelta(minutes=7 * k) for k in range(600)]
    moments += list(reversed(moments[::13]))

    for after in moments:
        kept = next_fire_times(cron, "Europe/Paris", after=after, n=3)
        assert kept == cron_module._next_fire_times(cron, "Europe/Paris", after=after, n=3), after


def test_the_api_shows_fire_times_in_utc_whatever_the_host_zone(api: TestClient, tokyo_host: None) -> None:
    body = api.post(SCHEDULES, json=a_schedule(cron="0 9 * * *", timezone="America/New_York")).json()

    hours = {datetime.fromisoformat(t).astimezone(UTC).hour for t in body["next_fire_times"]}
    assert hours <= {13, 14} and len(hours) >= 1
    assert all(t.endswith("+00:00") for t in body["next_fire_times"])


def test_a_daily_schedule_fires_once_a_day_across_the_march_change(tokyo_host: None) -> None:
    after = datetime(2026, 3, 6, 12, 0, tzinfo=UTC)  # New York's clocks go forward on 8 March

    fire_times = next_fire_times("0 9 * * *", "America/New_York", after=after, n=4)

    assert [t.date().day for t in fire_times] == [6, 7, 8, 9]
    assert [t.hour for t in fire_times] == [14, 14, 13, 13]


def test_a_time_skipped_by_spring_forward_fires_once_after_the_gap() -> None:
    after = datetime(2026, 3, 7, 12, 0, tzinfo=UTC)

    fire_times = next_fire_times("30 2 * * *", "America/New_York", after=after, n=3)

    assert fire_times == [
        datetime(2026, 3, 8, 7, 0, tzinfo=UTC),  # 02:30 does not exist: 03:00 EDT
        datetime(2026, 3, 9, 6, 30, tzinfo=UTC),
        datetime(2026, 3, 10, 6, 30, tzinfo=UTC),
    ]


def test_a_time_repeated_by_fall_back_fires_once(tokyo_host: None) -> None:
    after = datetime(2026, 10, 31, 12, 0, tzinfo=UTC)  # New York's clocks go back on 1 November

    fire_times = next_fire_times("30 1 * * *", "America/New_York", after=after, n=3)

    assert fire_times == [
        datetime(2026, 11, 1, 5, 30, tzinfo=UTC),  # 01:30 EDT, the first of the two
        datetime(2026, 11, 2, 6, 30, tzinfo=UTC),
        datetime(2026, 11, 3, 6, 30, tzinfo=UTC),
    ]


def test_an_every_half_hour_schedule_follows_elapsed_time_through_fall_back() -> None:
    after = datetime(2026, 11, 1, 4, 50, tzinfo=UTC)  # 00:50 EDT

    fire_times = next_fire_times("*/30 * * * *", "America/New_York", after=after, n=5)

    assert [b - a for a, b in pairwise(fire_times)] == [timedelta(minutes=30)] * 4
