"""`lanes`: the command line of Lanes, on the Python client (`lanes.client`), built with click.

    lanes submit demo.sleep seconds=3 --priority high --wait
    lanes status <id> | lanes list --status failed | lanes watch <id> | lanes cancel <id> | lanes retry <id>
    lanes queues | lanes workers | lanes credits
    lanes schedules list | add NAME TASK CRON [key=value …] | pause ID | resume ID | run ID | rm ID
    lanes admin create-tenant acme --plan pro      (python -m backend.admin, on this machine's database)
    lanes worker [QUEUE …] | lanes scheduler       (python -m worker / python -m scheduler)

Tables for people, `--json` for scripts. The URL and key come from `--url`/`--api-key`, else
LANES_URL/LANES_API_KEY, else ~/.config/lanes/config.toml. Exit status: 0 done (a waited job
succeeded), 1 a waited job failed, 2 usage, 3 a waited job was cancelled, 4 a wait timed out,
5 the API refused the request, 6 the API is unreachable or unavailable, 7 no key or a bad one.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from typing import Any

import click

from lanes import client as api

EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED, EXIT_TIMEOUT, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_UNAUTHORIZED = (
    1,
    2,
    3,
    4,
    5,
    6,
    7,
)


class Context:
    """What every command shares: how to reach the API, and how to print."""

    def __init__(self, url: str | None, api_key: str | None, as_json: bool) -> None:
        self.url, self.api_key = api.settings(url, api_key)
        self.as_json = as_json

    def client(self) -> api.Lanes:
        if not self.api_key:
            fail(
                "no API key: pass --api-key, set LANES_API_KEY, or put api_key in ~/.config/lanes/config.toml",  # noqa: E501
                EXIT_UNAUTHORIZED,
            )
        return api.Lanes(self.url, self.api_key)

    def show(
        self, value: Any, rows: Iterable[Iterable[Any]] | None = None, headers: list[str] | None = None
    ) -> None:
        if self.as_json or rows is None:
            click.echo(json.dumps(value, indent=None if self.as_json else 2, default=str))
        else:
            table(list(rows), headers or [])


def fail(message: str, code: int) -> None:
    click.echo(f"lanes: {message}", err=True)
    sys.exit(code)


def table(rows: list[Iterable[Any]], headers: list[str]) -> None:
    cells = [[str(c) if c is not None else "" for c in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            click.echo("  ".join("-" * width for width in widths))


def params_of(pairs: tuple[str, ...]) -> dict[str, Any]:
    """`key=value` pairs as params; a value that reads as JSON (3, true, [1]) is taken as such."""
    found: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.UsageError(f"{pair!r} is not key=value")
        try:
            found[key] = json.loads(raw)
        except ValueError:
            found[key] = raw
    return found


def job_row(job: dict[str, Any]) -> list[Any]:
    return [
        job["id"],
        job["task"],
        job["queue"],
        job["status"],
        f"{job['progress']}%",
        job["attempts"],
        job["created_at"],
    ]


JOB_HEADERS = ["id", "task", "queue", "status", "progress", "attempts", "created"]


class LanesGroup(click.Group):
    """Turns the client's errors into one line on stderr and an exit status, for every command."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except api.Unauthorized as exc:
            fail(f"the API refused the key: {exc.detail}", EXIT_UNAUTHORIZED)
        except api.Unavailable as exc:
            fail(f"the API is unavailable: {exc.detail}", EXIT_UNREACHABLE)
        except api.ApiUnreachable as exc:
            fail(str(exc), EXIT_UNREACHABLE)
        except api.ApiError as exc:
            fail(f"{exc.code}: {exc.detail}", EXIT_REFUSED)


@click.group(cls=LanesGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url", envvar="LANES_URL", help="The API (default: LANES_URL, the config file, http://127.0.0.1:8000)."
)
@click.option(
    "--api-key", envvar="LANES_API_KEY", help="An API key (default: LANES_API_KEY, the config file)."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of tables.")
@click.pass_context
def main(ctx: click.Context, url: str | None, api_key: str | None, as_json: bool) -> None:
    """Lanes: submit, follow and manage jobs on a Lanes API."""
    ctx.obj = Context(url, api_key, as_json)


# -- jobs ------------------------------------------------------------------------------------------


@main.command()
@click.argument("task")
@click.argument("params", nargs=-1)
@click.option("--priority", type=click.Choice(["high", "normal", "low"]))
@click.option("--max-retries", type=click.IntRange(min=0))
@click.option("--delay", "delay_s", type=click.FloatRange(min=0), help="Run this many seconds from now.")
@click.option("--timeout", "timeout_s", type=click.IntRange(min=1), help="Kill a run after this long (s).")
@click.option("--webhook-url", help="POST the job's end here, signed.")
@click.option("--idempotency-key", help="The same key and request within a day return the first job.")
@click.option("--wait", is_flag=True, help="Follow the job until it ends; the exit status says how.")
@click.option("--wait-timeout", type=click.FloatRange(min=0), help="Give up waiting after this long (s).")
@click.pass_obj
def submit(
    obj: Context,
    task: str,
    params: tuple[str, ...],
    wait: bool,
    wait_timeout: float | None,
    idempotency_key: str | None,
    **options: Any,
) -> None:
    """Submit TASK with key=value params (values read as JSON where they can be)."""
    with obj.client() as lanes:
        job = lanes.submit(task, params_of(params), idempotency_key=idempotency_key, **options)
        if not wait:
            obj.show(job, [job_row(job)], JOB_HEADERS)
            return
        follow(obj, lanes, job["id"], wait_timeout)


@main.command()
@click.argument("job_id")
@click.pass_obj
def status(obj: Context, job_id: str) -> None:
    """Show one job."""
    with obj.client() as lanes:
        job = lanes.get(job_id)
    if obj.as_json:
        obj.show(job)
        return
    for key in (
        "id",
        "task",
        "queue",
        "status",
        "progress",
        "stage",
        "attempts",
        "created_at",
        "started_at",
        "finished_at",
        "error",
        "result",
    ):
        click.echo(f"{key:<12} {job.get(key) if job.get(key) is not None else ''}")


@main.command(name="list")
@click.option(
    "--status",
    type=click.Choice(
        sorted(["scheduled", "queued", "started", "retrying", "succeeded", "failed", "cancelled"])
    ),
)
@click.option("--task")
@click.option("--priority", type=click.Choice(["high", "normal", "low"]))
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.pass_obj
def list_jobs(obj: Context, limit: int, **filters: Any) -> None:
    """List jobs, newest first."""
    with obj.client() as lanes:
        found = []
        for job in lanes.list(page_size=min(limit, 200), **filters):
            found.append(job)
            if len(found) >= limit:
                break
    obj.show(found, [job_row(job) for job in found], JOB_HEADERS)


@main.command()
@click.argument("job_id")
@click.option("--timeout", "wait_timeout", type=click.FloatRange(min=0), help="Give up after this long (s).")
@click.pass_obj
def watch(obj: Context, job_id: str, wait_timeout: float | None) -> None:
    """Follow a job until it ends, with its progress; the exit status says how it ended."""
    with obj.client() as lanes:
        follow(obj, lanes, job_id, wait_timeout)


@main.command()
@click.argument("job_id")
@click.pass_obj
def cancel(obj: Context, job_id: str) -> None:
    """Cancel a job (a running one is stopped)."""
    with obj.client() as lanes:
        job = lanes.cancel(job_id)
    obj.show(job, [job_row(job)], JOB_HEADERS)


@main.command()
@click.argument("job_id")
@click.pass_obj
def retry(obj: Context, job_id: str) -> None:
    """Run a failed or cancelled job again."""
    with obj.client() as lanes:
        job = lanes.retry(job_id)
    obj.show(job, [job_row(job)], JOB_HEADERS)


def follow(obj: Context, lanes: api.Lanes, job_id: str, wait_timeout: float | None) -> None:
    """Poll the job until it ends, drawing its progress and stage; exit with its outcome."""
    import time

    deadline = None if wait_timeout is None else time.monotonic() + wait_timeout
    poll = 0.2
    show_bar = not obj.as_json and sys.stderr.isatty()
    with (
        click.progressbar(length=100, label=job_id[:12], file=sys.stderr, show_eta=False)
        if show_bar
        else _nothing() as bar
    ):
        done = 0
        while True:
            job = lanes.get(job_id)
            if bar is not None:
                bar.label = f"{job_id[:12]} {job['status']}{' · ' + job['stage'] if job.get('stage') else ''}"
                bar.update(max(0, job["progress"] - done))
                done = max(done, job["progress"])
            if job["status"] in api.TERMINAL:
                break
            if deadline is not None and time.monotonic() >= deadline:
                obj.show(job, [job_row(job)], JOB_HEADERS)
                fail(f"job {job_id} is still {job['status']} after {wait_timeout:g} s", EXIT_TIMEOUT)
            time.sleep(poll)
            poll = min(2.0, poll * 1.5)
    obj.show(job, [job_row(job)], JOB_HEADERS)
    if job["status"] == "failed":
        fail(f"job {job_id} failed: {job.get('error')}", EXIT_FAILED)
    if job["status"] == "cancelled":
        fail(f"job {job_id} was cancelled", EXIT_CANCELLED)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


# -- the platform ----------------------------------------------------------------------------------


@main.command()
@click.pass_obj
def queues(obj: Context) -> None:
    """Count each queue's jobs (RQ's counts for platform admins)."""
    with obj.client() as lanes:
        found = lanes.queues()
    rows = []
    for q in found["queues"]:
        rq, sql = q.get("rq") or {}, q.get("sql") or {}
        rows.append(
            [
                q["name"],
                "yes" if q["paused"] else "",
                rq.get("queued", sql.get("queued")),
                rq.get("started", sql.get("started")),
                rq.get("scheduled", sql.get("scheduled")),
                sql.get("retrying"),
                rq.get("failed", sql.get("failed")),
                sql.get("succeeded"),
            ]
        )
    obj.show(
        found, rows, ["queue", "paused", "waiting", "started", "scheduled", "retrying", "failed", "succeeded"]
    )


@main.command()
@click.pass_obj
def workers(obj: Context) -> None:
    """List the workers (platform admins)."""
    with obj.client() as lanes:
        found = lanes.workers()
    rows = [
        [
            w["name"],
            w["hostname"],
            w["pid"],
            ",".join(w["queues"]),
            w["state"],
            w["current_job"],
            w["successful_jobs"],
            w["failed_jobs"],
        ]
        for w in found
    ]
    obj.show(found, rows, ["name", "host", "pid", "queues", "state", "current job", "done", "failed"])


@main.command()
@click.pass_obj
def credits(obj: Context) -> None:
    """Show the key's tenant's quota credits for today and this month."""
    with obj.client() as lanes:
        found = lanes.credits()
    rows = [
        [
            p,
            found[p]["limit"] if found[p]["limit"] is not None else "none",
            found[p]["used"],
            found[p]["remaining"] if found[p]["remaining"] is not None else "",
            found[p]["resets_at"],
        ]
        for p in ("daily", "monthly")
    ]
    obj.show(found, rows, ["period", "limit", "used", "remaining", "resets at"])


@main.group()
def schedules() -> None:
    """Cron schedules: list, add, pause, resume, run, rm."""


@schedules.command(name="list")
@click.pass_obj
def schedules_list(obj: Context) -> None:
    """List the schedules."""
    with obj.client() as lanes:
        found = lanes.schedules()
    rows = [
        [
            s["id"],
            s["name"],
            s["task"],
            s["cron"],
            s["timezone"],
            "yes" if s["enabled"] else "no",
            s["next_run_at"],
            s.get("last_job_status"),
        ]
        for s in found
    ]
    obj.show(found, rows, ["id", "name", "task", "cron", "time zone", "enabled", "next run", "last outcome"])


@schedules.command(name="add")
@click.argument("name")
@click.argument("task")
@click.argument("cron")
@click.argument("params", nargs=-1)
@click.option("--timezone", "--tz", default="UTC", show_default=True)
@click.option("--priority", type=click.Choice(["high", "normal", "low"]))
@click.option("--webhook-url")
@click.pass_obj
def schedules_add(
    obj: Context, name: str, task: str, cron: str, params: tuple[str, ...], **options: Any
) -> None:
    """Add a schedule: run TASK with key=value params whenever CRON matches (quote it)."""
    with obj.client() as lanes:
        found = lanes.add_schedule(name, task, cron, params_of(params), **options)
    obj.show(
        found,
        [[found["id"], found["name"], found["cron"], found["timezone"], found["next_run_at"]]],
        ["id", "name", "cron", "time zone", "next run"],
    )


def _schedule_action(name: str, help_text: str, call: str, **changes: Any) -> None:
    @schedules.command(name=name, help=help_text)
    @click.argument("schedule_id")
    @click.pass_obj
    def command(obj: Context, schedule_id: str) -> None:
        with obj.client() as lanes:
            if call == "update":
                found = lanes.update_schedule(schedule_id, **changes)
            elif call == "run":
                found = lanes.run_schedule(schedule_id)
            else:
                lanes.delete_schedule(schedule_id)
                found = {"deleted": schedule_id}
        obj.show(found)


_schedule_action("pause", "Disable a schedule: it fires no more until resumed.", "update", enabled=False)
_schedule_action("resume", "Enable a schedule again.", "update", enabled=True)
_schedule_action("run", "Fire a schedule now, as a job of its own.", "run")
_schedule_action("rm", "Delete a schedule; the jobs it fired stay.", "delete")


# -- processes and admin (on this machine) ---------------------------------------------------------


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def worker(args: tuple[str, ...]) -> None:
    """Run a worker here (python -m worker; settings from the environment)."""
    os.execv(sys.executable, [sys.executable, "-m", "worker", *args])


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def scheduler(args: tuple[str, ...]) -> None:
    """Run the scheduler daemon here (python -m scheduler)."""
    os.execv(sys.executable, [sys.executable, "-m", "scheduler", *args])


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def admin(args: tuple[str, ...]) -> None:
    """Tenants and keys, on this machine's database (python -m backend.admin: create-tenant, create-key …)."""
    from backend.admin import main as admin_main

    sys.exit(admin_main(list(args)))
