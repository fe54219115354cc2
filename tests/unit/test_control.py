"""Bulk cancel and retry: what the API refuses before it touches anything."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

BAD_SELECTIONS: list[tuple[str, Any, str]] = [
    ("nothing selected", {}, "invalid_request"),
    ("ids and a filter", {"ids": ["a"], "status": "failed"}, "invalid_request"),
    ("too many ids", {"ids": [f"j{n}" for n in range(1001)]}, "invalid_ids"),
    ("an id of the wrong form", {"ids": ["has space"]}, "invalid_ids"),
    ("unknown status", {"status": "done"}, "invalid_status"),
    ("limit over the cap", {"status": "failed", "limit": 5000}, "invalid_limit"),
    ("unknown field", {"status": "failed", "everything": True}, "unknown_field"),
]


@pytest.mark.parametrize("action", ["cancel", "retry"])
@pytest.mark.parametrize(("case", "body", "code"), BAD_SELECTIONS, ids=[c[0] for c in BAD_SELECTIONS])
def test_a_bulk_action_without_a_clear_selection_is_refused(
    api: TestClient, action: str, case: str, body: Any, code: str
) -> None:
    response = api.post(f"/api/v1/jobs/{action}", json=body)

    assert response.status_code == 422, response.text
    assert response.json()["code"] == code


def test_a_bulk_cancel_of_unknown_ids_says_so_for_each(api: TestClient) -> None:
    report = api.post("/api/v1/jobs/cancel", json={"ids": ["ghost-1", "ghost-2"]}).json()

    assert report == {
        "cancelled": [],
        "stopping": [],
        "not_cancelled": [
            {"id": "ghost-1", "reason": "not found", "status": None},
            {"id": "ghost-2", "reason": "not found", "status": None},
        ],
    }


@pytest.mark.parametrize("action", ["cancel", "retry"])
def test_acting_on_a_malformed_id_is_404(api: TestClient, action: str) -> None:
    response = api.post(f"/api/v1/jobs/bad%20id/{action}")

    assert response.status_code == 404 and response.json()["code"] == "job_not_found"


def test_cancelling_a_waiting_job_cancels_the_jobs_waiting_on_it(api: TestClient) -> None:
    parent = api.post("/api/v1/jobs", json={"task": "demo.echo"}).json()["id"]
    child = api.post("/api/v1/jobs", json={"task": "demo.echo", "depends_on": [parent]}).json()["id"]
    grandchild = api.post("/api/v1/jobs", json={"task": "demo.echo", "depends_on": [child]}).json()["id"]

    assert api.post(f"/api/v1/jobs/{parent}/cancel").status_code == 200

    for job_id in (child, grandchild):
        job = api.get(f"/api/v1/jobs/{job_id}").json()
        assert job["status"] == "cancelled" and job["cancelled_by"] == "dependency", job
    assert parent in api.get(f"/api/v1/jobs/{child}").json()["error"]


def test_a_requeued_job_whose_time_has_not_come_is_scheduled_again(api: TestClient) -> None:
    job_id = api.post("/api/v1/jobs", json={"task": "demo.echo", "delay_s": 3600}).json()["id"]
    assert api.post(f"/api/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"

    requeued = api.post(f"/api/v1/jobs/{job_id}/retry")

    assert requeued.status_code == 202
    assert requeued.json()["status"] == "scheduled" and requeued.json()["run_at"] is not None
