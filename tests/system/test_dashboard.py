"""The dashboard in a real headless Chromium (Debian's, driven by Playwright), against a real API
process and real workers on the private redis-server. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import IN_CI, tenant_key
from tests.helpers import ROOT, ApiFactory, WorkerFactory, wait_for

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts"


@pytest.fixture
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        if IN_CI:
            pytest.fail("chromium must be installed in CI (make test runs scripts/ensure_chromium.sh)")
        pytest.skip("chromium is not installed (scripts/ensure_chromium.sh installs it as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def apis(redis_url: str, database_url: str, tmp_path: Path) -> Iterator[ApiFactory]:
    factory = ApiFactory(redis_url=redis_url, database_url=database_url, log_dir=tmp_path)
    yield factory
    factory.stop_all()


class Stack:
    """A real API process, its operator key, and an HTTP client for setting things up."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {key}"}
        self.key = key

    def post(self, path: str, **body: Any) -> dict[str, Any]:
        response = httpx.post(f"{self.url}{path}", json=body, headers=self.headers, timeout=10)
        assert response.status_code < 300, response.text
        found: dict[str, Any] = response.json()
        return found

    def job(self, job_id: str) -> dict[str, Any]:
        found: dict[str, Any] = httpx.get(
            f"{self.url}/api/v1/jobs/{job_id}", headers=self.headers, timeout=10
        ).json()
        return found


@pytest.fixture
def stack(apis: ApiFactory, database_url: str) -> Stack:
    api = apis.start(rate_limit_default="10000/minute", rate_limit_submit="10000/minute", retry_base_s=1)
    return Stack(api.url, tenant_key(database_url, "operator"))


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


def logged_in(browser: Any, stack: Stack) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{stack.url}/dashboard")
    page.fill("#key", stack.key)
    page.click("#login-submit")
    page.wait_for_selector("#live-workers")
    return page


def test_the_dashboard_asks_for_a_key_and_refuses_a_bad_one(browser: Any, stack: Stack) -> None:
    page = browser.new_page()
    page.goto(f"{stack.url}/dashboard")

    assert page.is_visible("#login")
    page.fill("#key", "lanes_000000000000_" + "A" * 43)
    page.click("#login-submit")

    page.wait_for_function("document.getElementById('login-error').textContent.includes('refused')")
    assert page.is_visible("#login")


def test_each_page_shows_the_platform_and_a_job_moves_from_queued_to_succeeded(
    browser: Any, stack: Stack, workers: WorkerFactory
) -> None:
    stack.post(
        "/api/v1/schedules",
        name="nightly report",
        task="demo.echo",
        cron="0 3 * * *",
        timezone="Europe/Paris",
    )
    job = stack.post("/api/v1/jobs", task="demo.sleep", params={"seconds": 5, "steps": 5})
    page = logged_in(browser, stack)
    shot(page, "overview-before")
    assert page.inner_text("tr[data-queue=normal] td.depth") == "1"

    page.goto(f"{stack.url}/dashboard#/jobs/{job['id']}")
    page.wait_for_selector(".status.queued")
    workers.start(name="w-dashboard")
    page.wait_for_selector(".status.started", timeout=20_000)  # it runs 5 s; the page redraws every 3 s
    shot(page, "job-running")
    page.wait_for_selector(".status.succeeded", timeout=20_000)
    assert "slept_s" in page.inner_text("main")
    shot(page, "job")

    for name, selector in (
        ("overview", "#live-workers"),
        ("jobs", f"tr[data-job='{job['id']}']"),
        ("workers", "tr[data-worker=w-dashboard]"),
        ("schedules", "tr[data-schedule]"),
    ):
        page.goto(f"{stack.url}/dashboard#/{name}")
        page.wait_for_selector(selector, timeout=10_000)
        if name == "overview":  # the job that just succeeded, counted in the last hour's stats
            page.wait_for_function("document.getElementById('finished-hour')?.textContent === '1'")
        shot(page, name)
    assert "nightly report" in page.inner_text("main") and "Europe/Paris" in page.inner_text("main")
    page.click("tr[data-schedule] button.run-now")
    page.wait_for_selector("tr[data-schedule] .status", timeout=10_000)  # the run's outcome
    page.goto(f"{stack.url}/dashboard#/overview")
    page.wait_for_function("document.getElementById('live-workers')?.textContent === '1'", timeout=10_000)
    page.click("tr[data-queue=low] button.pause")
    page.wait_for_selector("tr[data-queue=low] button.resume")
    paused = httpx.get(f"{stack.url}/api/v1/queues", headers=stack.headers, timeout=10).json()["queues"]
    assert [q["name"] for q in paused if q["paused"]] == ["low"]
    page.click("tr[data-queue=low] button.resume")
    page.wait_for_selector("tr[data-queue=low] button.pause")


def test_retry_on_a_failed_job_and_cancel_on_a_queued_one(
    browser: Any, stack: Stack, workers: WorkerFactory
) -> None:
    workers.start()
    failed = stack.post("/api/v1/jobs", task="demo.fail", params={}, max_retries=0)
    wait_for(lambda: stack.job(failed["id"])["status"] == "failed", timeout_s=20, message="the job to fail")
    waiting = stack.post("/api/v1/jobs", task="demo.echo", params={}, delay_s=3600)
    page = logged_in(browser, stack)

    page.goto(f"{stack.url}/dashboard#/failed")
    page.wait_for_selector(f"tr[data-job='{failed['id']}'] button.retry-one")
    shot(page, "failed")
    page.click(f"tr[data-job='{failed['id']}'] button.retry-one")
    wait_for(
        lambda: stack.job(failed["id"])["attempts"] == 2, timeout_s=20, message="the retried job to run again"
    )

    page.goto(f"{stack.url}/dashboard#/jobs/{waiting['id']}")
    page.wait_for_selector("#cancel")
    page.click("#cancel")
    page.wait_for_selector(".status.cancelled", timeout=10_000)
    shot(page, "cancelled")
    assert stack.job(waiting["id"])["status"] == "cancelled"

    page.on("dialog", lambda dialog: dialog.accept())  # "Delete this job…?"
    page.click("#delete")
    page.wait_for_function("location.hash === '#/jobs'", timeout=10_000)
    gone = httpx.get(f"{stack.url}/api/v1/jobs/{waiting['id']}", headers=stack.headers, timeout=10)
    assert gone.status_code == 404
