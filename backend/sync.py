"""Keeping SQL rows in step with RQ, from inside the worker (and later the reconciler).

`JobMirror` is called at each step of a job's life with what the worker already knows, so the
happy path costs no extra Redis reads. A mirror write never fails a job: any error is logged, the
job id is added to the Redis set `lanes:mirror:pending`, and `replay_pending()` later rebuilds the
row from RQ's own record of the job (`sync_from_rq`), which is the truth.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from redis import Redis
from rq.exceptions import NoSuchJobError, StopRequested
from rq.job import Job
from rq.job import JobStatus as RQStatus
from rq.results import Result
from rq.timeouts import BaseTimeoutException
from sqlalchemy import Engine, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.orm import Session, sessionmaker

from backend import metrics, mirror, webhooks
from backend.config import Settings
from backend.db import session_scope, utcnow
from backend.dependencies import cancel_dependents
from backend.enums import JobStatus
from backend.queues import MIRROR_PENDING_KEY, LanesJob, attempt_of, epoch_of, scheduled_at
from backend.writebehind import Counter, Observation, WriteBehind

log = logging.getLogger(__name__)
#: One line per job state change (started: its wait; retrying, succeeded, failed: its run).
job_log = logging.getLogger("lanes.jobs")

REPLAY_BATCH = 100
WARM_UP_ID = "lanes-warm-up"  # a job id no row has: the warm-up's statements match nothing


class JobInterrupted(BaseException):
    """Raised in a simple worker's running job to stop it (a cancel, or the shutdown grace ran out).

    A BaseException, so a task's `except Exception` does not swallow it.
    """


#: Exceptions raised from signal handlers (a stop request, a job's timeout alarm, an interrupt).
#: They may arrive while a mirror write is under way and must reach RQ, never be swallowed as a
#: write error.
SIGNALLED = (StopRequested, BaseTimeoutException, JobInterrupted)


def let_signals_through(engine: Engine) -> None:
    """Make `engine` raise a signal handler's exception as itself.

    A handler raises wherever the main thread is. While SQLAlchemy prepares a statement's
    parameters, it would wrap what is raised in a `StatementError`. `except SIGNALLED` would miss
    that, and a SIGTERM would be logged as a failed mirror write and lost: the idle worker would
    not stop.
    """
    if not event.contains(engine, "handle_error", _signalled_as_itself):
        event.listen(engine, "handle_error", _signalled_as_itself)


def _signalled_as_itself(context: ExceptionContext) -> BaseException | None:
    original = context.original_exception
    if not isinstance(original, SIGNALLED) or not isinstance(original, Exception):
        return None  # SQLAlchemy wraps no BaseException (JobInterrupted) anyway
    # SQLAlchemy raises what this returns `from` the original: one of the same kind, then, not the
    # original itself, which would become its own cause.
    return type(original)(*original.args)


class JobMirror:
    """Writes a worker's view of its jobs to SQL; never raises."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        redis: Redis,
        progress_min_interval_s: float = 0.5,
        settings: Settings | None = None,
        behind: WriteBehind | None = None,
    ):
        self.sessions = sessions
        bind = getattr(sessions, "kw", {}).get("bind")
        if isinstance(bind, Engine):
            let_signals_through(bind)
        self.redis = redis
        self.progress_min_interval_s = progress_min_interval_s
        #: For webhook events (their retry policy); None emits none (the reconciler's sweep will).
        self.settings = settings
        #: Where writes and metrics go to be applied off the job's path; None applies them at once.
        self.behind = behind
        self.failures = 0

    def between_writes(self) -> contextlib.AbstractContextManager[None]:
        """A block in which no write-behind batch is under way (see `WriteBehind.between_batches`)."""
        return self.behind.between_batches() if self.behind is not None else contextlib.nullcontext()

    def direct(self) -> JobMirror:
        """This mirror without its write-behind: for a forked work-horse, where its thread does not run."""
        if self.behind is None:
            return self
        twin = copy.copy(self)
        twin.behind = None
        return twin

    def warm_up(self) -> None:
        """Compile the statements of a job's common steps in this process (they change nothing).

        SQLAlchemy caches a compiled statement on the engine. A forking worker never runs a step
        itself, so without this each work-horse, forked from it with an empty cache, would compile
        them anew for every job. A simple worker gains its first job's compile.
        """
        steps = (
            (JobStatus.STARTED, mirror.started_values(worker=None)),
            (JobStatus.SUCCEEDED, mirror.succeeded_values(result=None)),
            (JobStatus.RETRYING, mirror.retrying_values(error="", traceback=None, next_retry_at=None)),
            (JobStatus.FAILED, mirror.failed_values(error="", traceback=None)),
        )
        try:
            with session_scope(self.sessions) as session:
                for status, values in steps:
                    mirror.advance(session, job_id=WARM_UP_ID, status=status, attempt=0, values=values)
                mirror.record_progress(session, job_id=WARM_UP_ID, attempt=0, progress=0, stage="")
                mirror.record_progress(session, job_id=WARM_UP_ID, attempt=0, progress=0, stage=None)
        except Exception:  # a database that is away now is the replay's business later
            log.warning("mirror: statements not compiled ahead (the database does not answer)", exc_info=True)

    # -- transitions ---------------------------------------------------------------------------

    def started(self, job: Job, *, worker: str) -> None:
        values = mirror.started_values(worker=worker, started_at=job.started_at)
        self._advance(job, JobStatus.STARTED, attempt_of(job), values)
        wait = metrics.job_times(job).get("wait")
        if wait is not None:
            self._metrics([], [("lanes_job_wait_seconds", {"queue": job.origin}, wait)])

    def succeeded(self, job: Job, *, attempt: int, result: Any) -> None:
        values = mirror.succeeded_values(result=result, finished_at=_aware(job.ended_at))
        self._advance(job, JobStatus.SUCCEEDED, attempt, values)
        self._count(job, "lanes_jobs_succeeded")
        self._emit(job)

    def ended_badly(self, job: Job, *, attempt: int, exc_string: str) -> None:
        """After RQ handled a failure: the row becomes retrying, failed or cancelled as RQ decided."""
        rq_status = job.get_status(refresh=False)
        error = mirror.error_line(exc_string)
        if rq_status in (RQStatus.SCHEDULED, RQStatus.QUEUED):
            status = JobStatus.RETRYING
            try:
                next_at = scheduled_at(job, self.redis) if rq_status == RQStatus.SCHEDULED else None
            except SIGNALLED:
                raise
            except Exception:
                next_at = None
            values = mirror.retrying_values(error=error, traceback=exc_string, next_retry_at=next_at)
        elif rq_status in (RQStatus.STOPPED, RQStatus.CANCELED):
            status = JobStatus.CANCELLED
            values = {"cancelled_at": utcnow(), "finished_at": utcnow(), "error": error}
        else:
            status = JobStatus.FAILED
            values = mirror.failed_values(error=error, traceback=exc_string, finished_at=_aware(job.ended_at))
        self._advance(job, status, attempt, values)
        if status != JobStatus.CANCELLED:
            self._count(job, "lanes_jobs_retried" if status == JobStatus.RETRYING else "lanes_jobs_failed")
        if status in (JobStatus.FAILED, JobStatus.CANCELLED):
            self._emit(job)
            # Jobs waiting on this one can no longer run: cancel them (and theirs) rather than
            # leave them deferred for ever. Guarded like every mirror write.
            reason = f"failed: {error}" if status == JobStatus.FAILED else "was cancelled"
            self._write(
                job,
                lambda s: cancel_dependents(session=s, redis=self.redis, job_id=job.id, reason=reason),
                replay=False,
            )

    def progress_sink(self, job: Job) -> Callable[[int, str | None], None]:
        """A throttled `progress()` sink for `job`: Redis meta and SQL at most every interval."""
        attempt, epoch = attempt_of(job), epoch_of(job)
        last_write = 0.0
        last_stage: str | None = None

        def sink(percent: int, stage: str | None) -> None:
            nonlocal last_write, last_stage
            now = time.monotonic()
            urgent = percent >= 100 or (stage is not None and stage != last_stage)
            if not urgent and now - last_write < self.progress_min_interval_s:
                return
            last_write, last_stage = now, stage if stage is not None else last_stage
            try:
                job.meta["progress"] = percent
                if stage is not None:
                    job.meta["stage"] = stage
                job.save_meta()
            except SIGNALLED:
                raise
            except Exception:
                log.warning("job %s: progress not saved to Redis", job.id, exc_info=True)
            self._write(
                job,
                lambda s: mirror.record_progress(
                    s, job_id=job.id, attempt=attempt, epoch=epoch, progress=percent, stage=stage
                ),
                replay=False,
            )

        return sink

    def _log_change(self, job: Job, status: JobStatus, attempt: int) -> None:
        """One line per state change, with what a log search wants as fields (JSON with LANES_LOG_JSON)."""
        times = metrics.job_times(job)
        duration = times.get("run") if status != JobStatus.STARTED else times.get("wait")
        job_log.info(
            "job %s %s (%s on %s, attempt %d%s)",
            job.id,
            status.value,
            job.func_name,
            job.origin,
            attempt,
            f", {duration:.3f} s" if duration is not None else "",
            extra={
                "job_id": job.id,
                "task": job.func_name,
                "queue": job.origin,
                "status": status.value,
                "attempt": attempt,
                "duration_s": None if duration is None else round(duration, 6),
            },
        )

    def _advance(self, job: Job, status: JobStatus, attempt: int, values: dict[str, Any]) -> None:
        # Everything that reads the job stays inside the guarded write: nothing here may fail a job.
        try:
            self._log_change(job, status, attempt)
        except SIGNALLED:
            raise
        except Exception:  # a log line never fails a job either
            log.debug("job %s: state change not logged", job.id, exc_info=True)
        if self.behind is not None:
            try:
                move = mirror.Move(
                    job.id, status, attempt, epoch_of(job), values, partial(_create_columns, job)
                )
            except SIGNALLED:
                raise
            except Exception:  # undecodable job data: the guarded write below records what it can
                move = None
            if move is not None:
                self.behind.write(job.id, move)
                return
        self._write(
            job,
            lambda s: mirror.advance(
                s,
                job_id=job.id,
                status=status,
                attempt=attempt,
                epoch=epoch_of(job),
                values=values,
                create=_create_columns(job),
            ),
        )

    def sync(self, job: Job) -> None:
        """Bring the job's row up to RQ's record of it (guarded; replayed later if it fails)."""
        self._write(job, lambda s: sync_from_rq(s, self.redis, job.id))

    def _count(self, job: Job, counter: str) -> None:
        """One job end in the shared counters, and its run time (never raises but for signals)."""
        run = metrics.job_times(job).get("run")
        times = [("lanes_job_run_seconds", {"queue": job.origin}, run)] if run is not None else []
        self._metrics([(counter, {"task": job.func_name or ""}, 1)], times)

    def _metrics(self, counters: list[Counter], times: list[Observation]) -> None:
        if self.behind is not None:
            self.behind.record(counters, times)
        else:
            metrics.record(self.redis, counters, times)

    def close(self) -> None:
        """Apply every write handed over and stop the write-behind thread (a worker, as it exits)."""
        if self.behind is not None:
            self.behind.close()

    def _emit(self, job: Job) -> None:
        """The job's end event, if it has a webhook (its meta says); guarded, never replayed.

        A job enqueued before its row had a webhook, or whose emit failed, is the sweep's.
        """
        settings = self.settings
        if settings is not None and job.meta.get("webhook"):
            self._write(
                job,
                lambda s: webhooks.emit(session=s, redis=self.redis, settings=settings, job_ids=[job.id]),
                replay=False,
            )

    # -- failure handling ----------------------------------------------------------------------

    def _write(self, job: Job, change: Callable[[Session], Any], *, replay: bool = True) -> None:
        if self.behind is not None:
            self.behind.write(job.id, change, replay=replay)
            return
        try:
            with session_scope(self.sessions) as session:
                change(session)
        except SIGNALLED:
            raise
        except Exception:
            self.failures += 1
            metrics.count(self.redis, "lanes_mirror_write_failures")
            log.exception("job %s: SQL mirror write failed; it will be replayed from RQ", job.id)
            if replay:
                try:
                    self.redis.sadd(MIRROR_PENDING_KEY, job.id)
                except SIGNALLED:
                    raise
                except Exception:
                    log.exception("job %s: could not note the failed mirror write in Redis either", job.id)

    def replay_pending(self, limit: int = REPLAY_BATCH) -> int:
        """Rebuild rows whose mirror write failed, from RQ's record; how many were repaired."""
        try:
            raw_ids = self.redis.srandmember(MIRROR_PENDING_KEY, limit)
        except SIGNALLED:
            raise
        except Exception:
            log.warning("mirror replay: Redis unavailable", exc_info=True)
            return 0
        repaired = 0
        for raw in raw_ids or []:
            job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            try:
                with session_scope(self.sessions) as session:
                    sync_from_rq(session, self.redis, job_id)
                self.redis.srem(MIRROR_PENDING_KEY, job_id)
                repaired += 1
            except SIGNALLED:
                raise
            except Exception:
                log.warning("mirror replay of job %s failed; will try again", job_id, exc_info=True)
                break  # the database is probably still away; try the rest later
        return repaired


def sync_from_rq(session: Session, redis: Redis, job_id: str) -> JobStatus | None:
    """Bring row `job_id` up to RQ's record of the job; the status written, or None if nothing."""
    try:
        job = LanesJob.fetch(job_id, connection=redis)
    except NoSuchJobError:
        return None
    rq_status = job.get_status(refresh=False)
    attempt = attempt_of(job)
    create = _create_columns(job)
    status: JobStatus
    values: dict[str, Any]
    if rq_status == RQStatus.STARTED:
        status, values = (
            JobStatus.STARTED,
            mirror.started_values(worker=job.worker_name, started_at=_aware(job.started_at)),
        )
    elif rq_status == RQStatus.FINISHED:
        status = JobStatus.SUCCEEDED
        values = {
            **mirror.succeeded_values(result=job.return_value(), finished_at=_aware(job.ended_at)),
            **_ran(job),
        }
    elif rq_status == RQStatus.FAILED:
        exc = _last_error(job) or ""
        status = JobStatus.FAILED
        values = {
            **mirror.failed_values(
                error=mirror.error_line(exc), traceback=exc, finished_at=_aware(job.ended_at)
            ),
            **_ran(job),
        }
    elif rq_status in (RQStatus.STOPPED, RQStatus.CANCELED):
        status, values = JobStatus.CANCELLED, {"cancelled_at": utcnow(), "finished_at": utcnow(), **_ran(job)}
    elif rq_status == RQStatus.SCHEDULED and attempt > 1:
        # RQ counts retries down before it schedules the next run: the last run was attempt - 1.
        status, values = JobStatus.RETRYING, {"next_retry_at": scheduled_at(job, redis), **_ran(job)}
        last_error = _last_error(job)
        if last_error:  # RQ 3 keeps no result for a failure it retries; keep the row's error then
            values["error"] = mirror.error_line(last_error)
        attempt = max(1, attempt - 1)
    else:
        return None
    mirror.advance(
        session,
        job_id=job.id,
        status=status,
        attempt=attempt,
        epoch=epoch_of(job),
        values=values,
        create=create,
    )
    return status


def _last_error(job: Job) -> str | None:
    """The traceback of the job's latest run, if that run failed (RQ's results stream)."""
    result = job.latest_result()
    if result is not None and result.type == Result.Type.FAILED:
        return result.exc_string
    return None


def _ran(job: Job) -> dict[str, Any]:
    """When and where the job last ran, as far as RQ still says."""
    ran = {"started_at": _aware(job.started_at), "worker": job.worker_name}
    return {key: value for key, value in ran.items() if value is not None}


def _create_columns(job: Job) -> dict[str, Any]:
    """Columns for a row the worker creates, taken from RQ's record of the job."""
    try:
        params: Any = dict(job.kwargs or {})
        if job.args:
            params = {"args": list(job.args), **params}
    except Exception:  # undecodable job data: the row still records that the job existed
        params = {}
    columns = mirror.row_for_unknown_job(
        task=str(job.func_name or "unknown"),
        queue=job.origin,
        params=params,
        max_retries=int(job.meta.get("max_retries", 0) or 0),
    )
    for name, value in (("created_at", job.created_at), ("enqueued_at", job.enqueued_at)):
        if value is not None:
            columns[name] = _aware(value)
    return columns


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
