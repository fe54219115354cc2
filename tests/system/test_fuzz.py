"""Fuzzing the API: generated requests on every route, and hostile requests written by hand.

- schemathesis reads the app's OpenAPI schema and sends valid and invalid requests to every
  operation, with a platform admin's key and with none. No answer is a 5xx (but the 503 with which
  the health routes report what is missing), and every answer has a documented status code,
  content type, headers and body.
- Hostile requests (deep nesting, huge or broken strings, NUL bytes, lone surrogates, numbers out
  of range, wrong content types, odd ids) are each refused with the same 4xx
  `{"detail": ..., "code": ...}` on SQLite and PostgreSQL, and leave nothing written.

Both call `create_app` in-process, on the test database and fakeredis.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from schemathesis import APIOperation, Case, CheckContext, GenerationMode, Response
from schemathesis.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.python import asgi
from sqlalchemy import func, select

from backend.config import Settings
from backend.main import create_app
from backend.models import JobRow, ScheduleRow
from tests.conftest import tenant_key

#: Generated requests per operation, for valid data and again for invalid data.
EXAMPLES_PER_OPERATION = 15
#: Their 503 is an answer, not a failure: it reports a missing worker (there is none here).
HEALTH_ROUTES = {"/api/v1/health", "/readyz"}
MAX_BODY_BYTES: int = Settings.model_fields["max_body_bytes"].default
HUGE = 2**70


@pytest.fixture
def app(make_settings: Any, fake_redis: fakeredis.FakeRedis) -> Iterator[FastAPI]:
    """The API on the test database and fakeredis, rate limits off."""
    yield create_app(make_settings(), redis=fake_redis)
    # schemathesis keeps the lifespan of each app it called running until told: end this one
    # while its database is still there.
    asgi.shutdown_lifespans()


# -- generated requests --------------------------------------------------------------------------


def no_server_error(ctx: CheckContext, response: Response, case: Case) -> None:
    """No 5xx, but the 503 with which the health routes report what is missing."""
    reports = response.status_code == 503 and case.operation.path in HEALTH_ROUTES
    assert response.status_code < 500 or reports, f"{response.status_code}: {response.text[:500]}"


CHECKS = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def modes_for(operation: APIOperation) -> list[GenerationMode]:
    """Valid data for every operation; invalid data too where there is an input to break."""
    inputs = [operation.path_parameters, operation.query, operation.headers, operation.body]
    if any(len(found) for found in inputs):
        return [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    return [GenerationMode.POSITIVE]


def fuzz(operation: APIOperation, mode: GenerationMode, headers: dict[str, str]) -> None:
    """Send generated requests to `operation`; raise for the first that fails a check, shrunk."""

    @hypothesis.settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,  # the same requests on every run, so that CI is reproducible
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),  # slow or filtered data is fine here
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def send(case: Case) -> None:
        response = case.call(headers=headers)
        case.validate_response(response, checks=CHECKS, headers=headers)

    send()


def sweep(app: FastAPI, headers: dict[str, str]) -> list[str]:
    """Fuzz every operation of the app's schema; the failures found, one per operation and mode."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in modes_for(operation):
            try:
                fuzz(operation, mode, headers)
            except (Exception, BaseExceptionGroup) as exc:  # a check failed, or the app raised: go on
                failure = "".join(traceback.format_exception_only(exc))
                failures.append(f"{operation.label} ({mode.value} data): {failure}")
    return failures


@pytest.mark.parametrize(
    ("database_url", "keyed"),
    [("sqlite", True), ("postgresql", True), ("sqlite", False)],
    ids=["sqlite with a key", "postgresql with a key", "without a key"],  # keyless: 401s, one database
    indirect=["database_url"],
)
def test_no_generated_request_gets_a_server_error_or_an_answer_off_its_schema(
    app: FastAPI, database_url: str, keyed: bool
) -> None:
    headers = {"Authorization": f"Bearer {tenant_key(database_url, 'operator')}"} if keyed else {}

    # On a thread of its own, so the sweep starts at the same shallow stack wherever it runs:
    # CPython 3.11 gives frames 16 KB chunks of memory and unmaps a chunk when the frame that
    # opened it returns, so a hot call at a chunk's edge maps and unmaps on every call (under
    # pytest's deeper stack that made this test three times slower).
    with ThreadPoolExecutor(max_workers=1) as thread:
        failures = thread.submit(sweep, app, headers).result()

    assert not failures, "\n\n".join(failures)


# -- hostile requests ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Hostile:
    """A hostile request, and the status and code it is refused with.

    It is sent with a platform admin's key unless `keyed` is false, and its `content` without a
    Content-Length where `chunked`; `{schedule}` in its path names a real schedule.
    """

    refused: tuple[int, str]
    method: str
    path: str
    json: Any = None
    content: bytes | None = None
    params: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    keyed: bool = True
    chunked: bool = False

    def send(self, client: TestClient, *, key: str, schedule_id: str) -> Any:
        auth = {"Authorization": f"Bearer {key}"} if self.keyed else {}
        if self.content is None:
            body: dict[str, Any] = {"json": self.json}
        else:
            body = {"content": iter([self.content]) if self.chunked else self.content}
        return client.request(
            self.method,
            self.path.format(schedule=schedule_id),
            params=self.params,
            headers={**auth, **self.headers},
            **body,
        )


def nested_lists(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def nested_objects(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def echo_with(raw: bytes) -> bytes:
    """A demo.echo submit whose `params.x` is `raw` JSON."""
    return b'{"task": "demo.echo", "params": {"x": ' + raw + b"}}"


def echo_where(field: str, raw: bytes) -> bytes:
    """A demo.echo submit whose `field` is `raw` JSON (numbers Python's json would not write)."""
    return b'{"task": "demo.echo", "' + field.encode() + b'": ' + raw + b"}"


def schedule_where(field: str, raw: bytes) -> bytes:
    return b'{"name": "n", "task": "demo.echo", "cron": "0 3 * * *", "' + field.encode() + b'": ' + raw + b"}"


JOBS = "/api/v1/jobs"
BATCH = "/api/v1/jobs/batch"
SCHEDULES = "/api/v1/schedules"
A_SCHEDULE = "/api/v1/schedules/{schedule}"
JSON = {"Content-Type": "application/json"}
ECHO = {"task": "demo.echo"}
SCHEDULE = {"name": "nightly", "task": "demo.echo", "cron": "0 3 * * *"}
YEAR_10000 = "9999-12-31T23:59:59-23:59"  # past year 9999 once in UTC

HOSTILE = {
    # -- POST /api/v1/jobs: nesting and size
    "10,000 nested lists in params": Hostile(
        (400, "too_deep"), "POST", JOBS, content=echo_with(nested_lists(10_000))
    ),
    "10,000 nested objects in params": Hostile(
        (400, "too_deep"), "POST", JOBS, content=echo_with(nested_objects(10_000))
    ),
    "a body over the size limit": Hostile(
        (413, "body_too_large"), "POST", JOBS, json={**ECHO, "params": {"s": "x" * MAX_BODY_BYTES}}
    ),
    "a body over the size limit, sent without a length": Hostile(
        (413, "body_too_large"),
        "POST",
        JOBS,
        content=b" " * MAX_BODY_BYTES + b"{}",
        headers=JSON,
        chunked=True,
    ),
    "a 500 KB task name": Hostile((422, "invalid_task"), "POST", JOBS, json={"task": "t" * 500_000}),
    "a 500 KB string where 1,000 characters are allowed": Hostile(
        (422, "invalid_params"),
        "POST",
        JOBS,
        json={"task": "demo.fail", "params": {"message": "m" * 500_000}},
    ),
    # -- POST /api/v1/jobs: broken text
    "invalid UTF-8": Hostile(
        (400, "invalid_utf8"), "POST", JOBS, content=b'{"task": "demo.echo\xff\xfe"}', headers=JSON
    ),
    "JSON in latin-1": Hostile(
        (400, "invalid_utf8"),
        "POST",
        JOBS,
        content='{"task": "demo.echo", "params": {"s": "é"}}'.encode("latin-1"),
        headers={"Content-Type": "application/json; charset=latin-1"},
    ),
    "a lone surrogate in params": Hostile(
        (400, "invalid_unicode"), "POST", JOBS, content=echo_with(b'"\\ud800"'), headers=JSON
    ),
    "a lone surrogate in the task name": Hostile(
        (400, "invalid_unicode"), "POST", JOBS, content=b'{"task": "demo.echo\\udfff"}', headers=JSON
    ),
    "a NUL in the task name": Hostile((422, "unknown_task"), "POST", JOBS, json={"task": "demo.echo\u0000"}),
    "a NUL in a typed param": Hostile(
        (422, "invalid_params"), "POST", JOBS, json={"task": "demo.sleep", "params": {"seconds": "1\u0000"}}
    ),
    "a NUL in the Idempotency-Key": Hostile(
        (422, "invalid_idempotency_key"), "POST", JOBS, json=ECHO, headers={"Idempotency-Key": "key\u0000"}
    ),
    "a NUL in the webhook URL": Hostile(
        (422, "invalid_webhook_url"), "POST", JOBS, json={**ECHO, "webhook_url": "https://example.com/\u0000"}
    ),
    "a NUL in a dependency id": Hostile(
        (422, "invalid_depends_on"), "POST", JOBS, json={**ECHO, "depends_on": ["a\u0000b"]}
    ),
    # -- POST /api/v1/jobs: numbers and times out of range
    "max_retries 1e400": Hostile(
        (422, "invalid_max_retries"), "POST", JOBS, content=echo_where("max_retries", b"1e400"), headers=JSON
    ),
    "max_retries -1e400": Hostile(
        (422, "invalid_max_retries"), "POST", JOBS, content=echo_where("max_retries", b"-1e400"), headers=JSON
    ),
    "max_retries 2**70": Hostile(
        (422, "invalid_max_retries"), "POST", JOBS, json={**ECHO, "max_retries": HUGE}
    ),
    "timeout_s 1e400": Hostile(
        (422, "invalid_timeout_s"), "POST", JOBS, content=echo_where("timeout_s", b"1e400"), headers=JSON
    ),
    "timeout_s 2**70": Hostile((422, "invalid_timeout_s"), "POST", JOBS, json={**ECHO, "timeout_s": HUGE}),
    "delay_s 1e400": Hostile(
        (422, "invalid_delay_s"), "POST", JOBS, content=echo_where("delay_s", b"1e400"), headers=JSON
    ),
    "delay_s -1e400": Hostile(
        (422, "invalid_delay_s"), "POST", JOBS, content=echo_where("delay_s", b"-1e400"), headers=JSON
    ),
    "delay_s 2**70": Hostile((422, "invalid_delay_s"), "POST", JOBS, json={**ECHO, "delay_s": HUGE}),
    "priority 1e400": Hostile(
        (422, "invalid_priority"), "POST", JOBS, content=echo_where("priority", b"1e400"), headers=JSON
    ),
    "priority 2**70": Hostile((422, "invalid_priority"), "POST", JOBS, json={**ECHO, "priority": HUGE}),
    "a param of 1e400": Hostile(
        (422, "invalid_params"),
        "POST",
        JOBS,
        content=b'{"task": "demo.sleep", "params": {"seconds": 1e400}}',
        headers=JSON,
    ),
    "NaN": Hostile(
        (400, "invalid_json_constant"), "POST", JOBS, content=echo_where("delay_s", b"NaN"), headers=JSON
    ),
    "a run_at past year 9999 in UTC": Hostile(
        (422, "invalid_run_at"), "POST", JOBS, json={**ECHO, "run_at": YEAR_10000}
    ),
    "a run_at before year 1 in UTC": Hostile(
        (422, "invalid_run_at"), "POST", JOBS, json={**ECHO, "run_at": "0001-01-01T00:00:00+23:59"}
    ),
    "a run_at past year 9999 with an Idempotency-Key": Hostile(
        (422, "invalid_run_at"),
        "POST",
        JOBS,
        json={**ECHO, "run_at": YEAR_10000},
        headers={"Idempotency-Key": "k"},
    ),
    # -- POST /api/v1/jobs: not a JSON object
    "a text/plain body": Hostile(
        (422, "invalid_request"),
        "POST",
        JOBS,
        content=b'{"task": "demo.echo"}',
        headers={"Content-Type": "text/plain"},
    ),
    "a form body": Hostile(
        (422, "invalid_request"),
        "POST",
        JOBS,
        content=b"task=demo.echo",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ),
    "an XML body": Hostile(
        (422, "invalid_request"),
        "POST",
        JOBS,
        content=b"<job><task>demo.echo</task></job>",
        headers={"Content-Type": "application/xml"},
    ),
    "a multipart body": Hostile(
        (422, "invalid_request"),
        "POST",
        JOBS,
        content=b'--b\r\nContent-Disposition: form-data; name="task"\r\n\r\ndemo.echo\r\n--b--\r\n',
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    ),
    "an empty body": Hostile((422, "invalid_request"), "POST", JOBS, content=b"", headers=JSON),
    "a JSON array": Hostile((422, "invalid_request"), "POST", JOBS, json=[ECHO]),
    "a JSON string": Hostile((422, "invalid_request"), "POST", JOBS, json="demo.echo"),
    "JSON null": Hostile((422, "invalid_request"), "POST", JOBS, content=b"null", headers=JSON),
    "params as an array": Hostile((422, "invalid_params"), "POST", JOBS, json={**ECHO, "params": [1, 2]}),
    "an unknown field": Hostile((422, "unknown_field"), "POST", JOBS, json={**ECHO, "tenant_id": "other"}),
    # -- POST /api/v1/jobs/batch
    "a batch of 10,000 nested lists": Hostile(
        (400, "too_deep"), "POST", BATCH, content=b'{"jobs": [' + echo_with(nested_lists(10_000)) + b"]}"
    ),
    "a batch that is a JSON array": Hostile((422, "invalid_request"), "POST", BATCH, json=[ECHO]),
    "a batch whose jobs are not a list": Hostile((422, "invalid_jobs"), "POST", BATCH, json={"jobs": ECHO}),
    "a batch of 1,001 jobs": Hostile((422, "invalid_jobs"), "POST", BATCH, json={"jobs": [ECHO] * 1001}),
    "a batch item that is not an object": Hostile(
        (422, "invalid_batch_item"), "POST", BATCH, json={"jobs": [ECHO, 7]}
    ),
    "a batch with a NUL task after a good job": Hostile(
        (422, "invalid_batch_item"), "POST", BATCH, json={"jobs": [ECHO, {"task": "demo.echo\u0000"}]}
    ),
    "a batch item depending on item 2**70": Hostile(
        (422, "invalid_batch_item"),
        "POST",
        BATCH,
        json={"jobs": [ECHO, {**ECHO, "depends_on_items": [HUGE]}]},
    ),
    "a batch item with a run_at past year 9999": Hostile(
        (422, "invalid_batch_item"), "POST", BATCH, json={"jobs": [ECHO, {**ECHO, "run_at": YEAR_10000}]}
    ),
    "an empty batch body": Hostile((422, "invalid_request"), "POST", BATCH, content=b"", headers=JSON),
    # -- POST /api/v1/schedules
    "a schedule named with a NUL": Hostile(
        (422, "invalid_name"), "POST", SCHEDULES, json={**SCHEDULE, "name": "a\u0000"}
    ),
    "a schedule of a NUL task": Hostile(
        (422, "unknown_task"), "POST", SCHEDULES, json={**SCHEDULE, "task": "\u0000"}
    ),
    "a schedule with a NUL webhook URL": Hostile(
        (422, "invalid_webhook_url"),
        "POST",
        SCHEDULES,
        json={**SCHEDULE, "webhook_url": "https://example.com/\u0000"},
    ),
    "a cron with a NUL": Hostile(
        (422, "invalid_cron"), "POST", SCHEDULES, json={**SCHEDULE, "cron": "0 3 * * *\u0000"}
    ),
    "a time zone with a NUL": Hostile(
        (422, "invalid_timezone"), "POST", SCHEDULES, json={**SCHEDULE, "timezone": "Europe/Paris\u0000"}
    ),
    "a time zone that is a path": Hostile(
        (422, "invalid_timezone"), "POST", SCHEDULES, json={**SCHEDULE, "timezone": "../../../../etc/passwd"}
    ),
    "a schedule with max_retries 2**70": Hostile(
        (422, "invalid_max_retries"), "POST", SCHEDULES, json={**SCHEDULE, "max_retries": HUGE}
    ),
    "a schedule with max_retries 1e400": Hostile(
        (422, "invalid_max_retries"),
        "POST",
        SCHEDULES,
        content=schedule_where("max_retries", b"1e400"),
        headers=JSON,
    ),
    "a schedule with priority -1e400": Hostile(
        (422, "invalid_priority"),
        "POST",
        SCHEDULES,
        content=schedule_where("priority", b"-1e400"),
        headers=JSON,
    ),
    "a schedule with 10,000 nested objects": Hostile(
        (400, "too_deep"), "POST", SCHEDULES, content=schedule_where("params", nested_objects(10_000))
    ),
    "a schedule that is a JSON array": Hostile((422, "invalid_request"), "POST", SCHEDULES, json=[SCHEDULE]),
    "a 500 KB schedule name": Hostile(
        (422, "invalid_name"), "POST", SCHEDULES, json={**SCHEDULE, "name": "n" * 500_000}
    ),
    "a 500 KB cron": Hostile(
        (422, "invalid_cron"), "POST", SCHEDULES, json={**SCHEDULE, "cron": "* " * 250_000}
    ),
    # -- PATCH /api/v1/schedules/{id}
    "a rename with a NUL": Hostile((422, "invalid_name"), "PATCH", A_SCHEDULE, json={"name": "a\u0000"}),
    "a change to max_retries 2**70": Hostile(
        (422, "invalid_max_retries"), "PATCH", A_SCHEDULE, json={"max_retries": HUGE}
    ),
    "a change to a NUL cron": Hostile((422, "invalid_cron"), "PATCH", A_SCHEDULE, json={"cron": "\u0000"}),
    "a change to a NUL time zone": Hostile(
        (422, "invalid_timezone"), "PATCH", A_SCHEDULE, json={"timezone": "\u0000"}
    ),
    "a change with a lone surrogate": Hostile(
        (400, "invalid_unicode"), "PATCH", A_SCHEDULE, content=b'{"name": "\\udbff"}', headers=JSON
    ),
    "a change with 10,000 nested lists": Hostile(
        (400, "too_deep"), "PATCH", A_SCHEDULE, content=b'{"params": {"x": ' + nested_lists(10_000) + b"}}"
    ),
    "a change in invalid UTF-8": Hostile(
        (400, "invalid_utf8"), "PATCH", A_SCHEDULE, content=b'{"name": "\xc3\x28"}', headers=JSON
    ),
    "a change that is a JSON array": Hostile(
        (422, "invalid_request"), "PATCH", A_SCHEDULE, json=[{"name": "n"}]
    ),
    "a change with an empty body": Hostile(
        (422, "invalid_request"), "PATCH", A_SCHEDULE, content=b"", headers=JSON
    ),
    "a change as text/plain": Hostile(
        (422, "invalid_request"),
        "PATCH",
        A_SCHEDULE,
        content=b'{"enabled": false}',
        headers={"Content-Type": "text/plain"},
    ),
    # -- GET /api/v1/jobs?… and other query strings
    "a NUL status": Hostile((422, "invalid_status"), "GET", JOBS, params={"status": "\u0000"}),
    "a 50 KB status": Hostile((422, "invalid_status"), "GET", JOBS, params={"status": "s" * 50_000}),
    "a NUL task filter": Hostile((422, "invalid_task"), "GET", JOBS, params={"task": "demo\u0000"}),
    "a NUL priority filter": Hostile(
        (422, "invalid_priority"), "GET", JOBS, params={"priority": "high\u0000"}
    ),
    "a NUL tenant": Hostile((404, "tenant_not_found"), "GET", JOBS, params={"tenant": "operator\u0000"}),
    "a NUL cursor": Hostile((422, "invalid_cursor"), "GET", JOBS, params={"cursor": "\u0000"}),
    "a cursor that is not one": Hostile(
        (422, "invalid_cursor"), "GET", JOBS, params={"cursor": "not-a-cursor"}
    ),
    "a limit of 1e400": Hostile((422, "invalid_limit"), "GET", JOBS, params={"limit": "1e400"}),
    "a limit of -2**70": Hostile((422, "invalid_limit"), "GET", JOBS, params={"limit": str(-HUGE)}),
    "schedules with a limit of 1e400": Hostile(
        (422, "invalid_limit"), "GET", SCHEDULES, params={"limit": "1e400"}
    ),
    "schedules with a NUL cursor": Hostile(
        (422, "invalid_cursor"), "GET", SCHEDULES, params={"cursor": "\u0000"}
    ),
    "credits of a NUL tenant": Hostile(
        (404, "tenant_not_found"), "GET", "/api/v1/credits", params={"tenant": "\u0000"}
    ),
    "stats over 2**70 seconds": Hostile(
        (422, "invalid_window_s"), "GET", "/api/v1/queues/stats", params={"window_s": str(HUGE)}
    ),
    "stats in buckets of 1e400 seconds": Hostile(
        (422, "invalid_bucket_s"), "GET", "/api/v1/queues/stats", params={"bucket_s": "1e400"}
    ),
    # -- odd ids in paths
    "a NUL job id": Hostile((404, "job_not_found"), "GET", "/api/v1/jobs/%00"),
    "a job id in invalid UTF-8": Hostile((404, "job_not_found"), "GET", "/api/v1/jobs/%FF%FE"),
    "a job id climbing out": Hostile((404, "not_found"), "GET", "/api/v1/jobs/..%2F..%2Fetc%2Fpasswd"),
    "a 10,000-character job id": Hostile((422, "invalid_path"), "GET", "/api/v1/jobs/" + "j" * 10_000),
    "cancelling a NUL job id": Hostile((404, "job_not_found"), "POST", "/api/v1/jobs/a%00b/cancel"),
    "retrying a lone-surrogate job id": Hostile(
        (404, "job_not_found"), "POST", "/api/v1/jobs/%ED%A0%80/retry"
    ),
    "deleting a NUL job id": Hostile((404, "job_not_found"), "DELETE", "/api/v1/jobs/%00"),
    "the webhooks of a NUL job id": Hostile((422, "invalid_path"), "GET", "/api/v1/jobs/%00/webhooks"),
    "a NUL schedule id": Hostile((404, "schedule_not_found"), "GET", "/api/v1/schedules/%00"),
    "changing a NUL schedule id": Hostile(
        (404, "schedule_not_found"), "PATCH", "/api/v1/schedules/%00", json={"enabled": False}
    ),
    "running a NUL schedule id": Hostile((404, "schedule_not_found"), "POST", "/api/v1/schedules/%00/run"),
    "emptying a NUL queue": Hostile((404, "queue_not_found"), "POST", "/api/v1/queues/%00/empty"),
    "pausing a 10,000-character queue": Hostile(
        (422, "invalid_path"), "POST", "/api/v1/queues/" + "q" * 10_000 + "/pause"
    ),
    "cancelling jobs by a NUL id": Hostile(
        (422, "invalid_ids"), "POST", "/api/v1/jobs/cancel", json={"ids": ["\u0000"]}
    ),
    "retrying jobs of a NUL task": Hostile(
        (422, "invalid_task"), "POST", "/api/v1/jobs/retry", json={"task": "\u0000"}
    ),
    "cancelling up to 2**70 jobs": Hostile(
        (422, "invalid_limit"), "POST", "/api/v1/jobs/cancel", json={"status": "queued", "limit": HUGE}
    ),
    # -- keys
    "a bearer key with a NUL": Hostile(
        (401, "unauthorized"), "GET", JOBS, headers={"Authorization": "Bearer lanes_\u0000"}, keyed=False
    ),
    "an X-API-Key with a NUL": Hostile(
        (401, "unauthorized"), "GET", "/api/v1/tasks", headers={"X-API-Key": "lanes_\u0000"}, keyed=False
    ),
}


def count(client: TestClient, model: Any) -> int:
    with client.app.state.lanes.sessions() as session:  # type: ignore[attr-defined]
        return session.scalar(select(func.count()).select_from(model)) or 0


@pytest.mark.parametrize("hostile", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_request_is_refused_with_a_4xx_and_writes_nothing(
    app: FastAPI, database_url: str, fake_redis: fakeredis.FakeRedis, hostile: Hostile
) -> None:
    key = tenant_key(database_url, "operator")
    with TestClient(app) as client:
        schedule = client.post(SCHEDULES, json=SCHEDULE, headers={"Authorization": f"Bearer {key}"}).json()
        rq_keys = set(fake_redis.keys("rq:*"))

        response = hostile.send(client, key=key, schedule_id=schedule["id"])

        assert (response.status_code, response.json()["code"]) == hostile.refused, response.text[:2000]
        assert set(response.json()) >= {"detail", "code"}
        assert count(client, JobRow) == 0
        assert count(client, ScheduleRow) == 1
        assert set(fake_redis.keys("rq:*")) == rq_keys
        again = client.get(f"{SCHEDULES}/{schedule['id']}", headers={"Authorization": f"Bearer {key}"})
        assert again.json() == schedule
