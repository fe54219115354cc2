"""Lanes workers: RQ's, draining queues in strict order and mirroring each job's life to SQL.

Two modes share every hook (`LanesBase`): `LanesWorker` (`fork`, the default) runs each job in a
work-horse forked for it, as RQ's `Worker` does; `LanesSimpleWorker` (`simple`) runs jobs in its
own process, as RQ's `SimpleWorker` does, and hands its mirror writes to a thread that commits them
in batches (`backend.writebehind`).

Mirror writes hook in after RQ has persisted each step, and never raise: RQ re-runs a job whose
success path raises, so nothing here may fail a job. The hooks run where the job runs (the
work-horse, or the simple worker) for its start, success and failure, and in the forking worker
when its horse dies unexpectedly. Webhook deliveries (the `webhooks` queue) are run but not
mirrored: they have no row of their own.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
from datetime import datetime
from typing import Any

from redis.exceptions import RedisError
from rq import SimpleWorker, Worker
from rq.exceptions import StopRequested
from rq.executions import Execution
from rq.job import Job
from rq.job import JobStatus as RQJobStatus
from rq.queue import Queue
from rq.registry import StartedJobRegistry
from rq.scheduler import RQScheduler
from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty
from rq.utils import now
from rq.worker.base import BaseWorker, WorkerStatus

from backend.control import CLAIM_SCRIPT
from backend.enums import WEBHOOK_QUEUE
from backend.queues import (
    ALIVE_BEATS,
    ALIVE_FIELD,
    IDLE_QUEUE,
    PAUSED_KEY,
    LanesJob,
    LanesQueue,
    alive_key,
    attempt_of,
    cancel_flag_key,
    queue_for,
)
from backend.sync import JobInterrupted, JobMirror
from backend.tasks.reporting import set_progress_sink
from worker.lifeline import die_with_parent

log = logging.getLogger(__name__)

STOP_CHECK_S = 0.1  # how often a sleeping scheduler looks for a stop request
SCHEDULER_STOP_S = 5.0  # how long a stopping worker waits for its scheduler process before killing it
#: The most a horse reports through its pipe; more (a big result) and it writes the row itself.
REPORT_MAX_BYTES = 60_000  # under Linux's 64 KiB pipe, so the write never blocks
BEAT_TICK_S = 0.5  # how often a simple worker's beater looks at its running job
BEAT_AT_MOST_S = 1.0  # a plain heartbeat this soon after the last is left out
#: Delivered to a simple worker's main thread to interrupt its running job.
INTERRUPT_SIGNAL = signal.SIGUSR1
#: How long a thread may hold the GIL while another waits for it (Python's default: 5 ms). The
#: simple worker's main thread waits on Redis often and must not then wait for the write-behind.
GIL_SWITCH_S = 0.0005
#: The error of a job handed back to its queue because its worker shut down.
HANDED_BACK = "handed back"
#: The error of a job whose horse ended while Redis was away, before it could record the end.
REDIS_LOST = "the job's end could not be recorded: Redis was away"


class JobCancelled(Exception):
    """Raised in a work-horse whose job was cancelled just before it could start."""


class PromptScheduler(RQScheduler):
    """RQ's scheduler (moves due retries back onto their queues) that stops within 0.1 s.

    RQ's own sleeps its whole interval before it looks at the stop flag, which held an idle
    worker's exit up to a second.
    """

    #: The worker process that started this scheduler: it ends when that one does.
    parent_pid = 0

    def work(self) -> None:
        if self.parent_pid:
            die_with_parent(self.parent_pid)
        self._install_signal_handlers()
        self.register_birth()
        while not self._stop_requested:
            if self.should_reacquire_locks:
                self.acquire_locks()
            self.heartbeat()
            self.enqueue_scheduled_jobs()
            deadline = time.monotonic() + self.interval
            while not self._stop_requested and time.monotonic() < deadline:
                time.sleep(STOP_CHECK_S)
        self.stop()


class LanesBase(BaseWorker):
    """What both Lanes workers add to RQ's; set `mirror`, `poll_s`, `shutdown_grace_s` before `work()`.

    Its heartbeat (every `job_monitoring_interval` while busy) also sets `lanes:alive:<name>` for
    three beats, so the reconciler's sweep can retry a dead worker's job within seconds. On SIGTERM
    it finishes the running job, or after `shutdown_grace_s` hands the job back to its queue
    (attempt counted), and exits.
    """

    queue_class = LanesQueue
    mirror: JobMirror
    poll_s: int = 5
    shutdown_grace_s: float = 0.0
    _stop_asked_at: float | None = None
    _handing_back: str | None = None
    _alive_renewed = -float("inf")  # time.monotonic() of the last renewal of the alive key

    @property
    def dequeue_timeout(self) -> int:
        # Wake up every `poll_s` while idle so failed mirror writes are replayed promptly.
        return max(1, min(self.poll_s, self.worker_ttl - 15))

    _last_replay: float = 0.0
    _burst = False  # set by `_start_scheduler`, which RQ calls with `work(burst=...)`

    @property
    def _replay_due(self) -> bool:
        return time.monotonic() - self._last_replay >= self.poll_s

    @property
    def should_run_maintenance_tasks(self) -> bool:
        return self._replay_due or super().should_run_maintenance_tasks

    def run_maintenance_tasks(self) -> None:
        try:
            if self._replay_due:
                self._last_replay = time.monotonic()
                self._skip_paused_queues()
                self.mirror.replay_pending()
                self._take_over_scheduling()
            if super().should_run_maintenance_tasks:
                super().run_maintenance_tasks()
        except RedisError as exc:  # Redis away: the dequeue that follows waits for it with backoff
            log.warning("worker %s: maintenance skipped, Redis does not answer (%s)", self.name, exc)

    # -- Redis going away -------------------------------------------------------------------------
    #
    # RQ waits out a Redis outage only inside its blocking dequeue; an error anywhere else (a state
    # change, a heartbeat, the end of a job) ends the worker. These keep it alive instead: a lost
    # heartbeat or state write is only logged, and a job whose end could not be recorded is settled
    # once Redis is back.

    def check_for_suspension(self, burst: bool) -> None:
        try:
            super().check_for_suspension(burst)
        except RedisError as exc:
            log.warning("worker %s: suspension not checked, Redis does not answer (%s)", self.name, exc)

    _idle_recorded = False  # `idle` is what Redis says now: RQ sets it twice between two jobs

    def set_state(self, state: Any, pipeline: Any = None) -> None:
        idle = state == WorkerStatus.IDLE and pipeline is None
        if idle and self._idle_recorded:
            return
        self._idle_recorded = False
        try:
            super().set_state(state, pipeline)
            self._idle_recorded = idle
        except RedisError as exc:
            log.warning("worker %s: state %s not recorded, Redis does not answer (%s)", self.name, state, exc)

    def wait_for_redis(self) -> None:
        """Block until Redis answers, backing off from 0.5 s to 10 s; a stop request ends the wait."""
        wait = 0.5
        while True:
            try:
                self.connection.ping()
                return
            except RedisError:
                if self._stop_asked_at is not None and not self.horse_pid:
                    raise StopRequested() from None
                time.sleep(wait)
                wait = min(10.0, wait * 2)

    def _skip_paused_queues(self) -> None:
        """Listen only on the queues no admin has paused (`lanes:paused`), read every poll.

        With every queue paused the worker listens on an idle queue nothing is put on, so it still
        wakes every poll to look again.
        """
        try:
            members = self.connection.smembers(PAUSED_KEY)
            paused = {name.decode() if isinstance(name, bytes) else str(name) for name in members}
        except RedisError:
            return  # keep the last view; the dequeue itself will report Redis trouble
        serving = [queue for queue in self.queues if queue.name not in paused]
        if [q.name for q in serving] != [q.name for q in self._ordered_queues]:
            log.info("worker %s: paused %s", self.name, ", ".join(sorted(paused)) or "none")
        self._ordered_queues = serving or [queue_for(IDLE_QUEUE, self.connection)]

    def _take_over_scheduling(self) -> None:
        # RQ tries for a dead worker's scheduler locks only at its 10-minute maintenance, so
        # retries and delayed jobs could wait that long after a worker died. Try every poll: a
        # lock is a SET NX per queue, and it frees 61 s after its holder stops renewing it.
        # Not while stopping: RQ stopped this worker's scheduler on the stop request, and one
        # started again now would be an orphan that takes the worker's SIGTERM handler along.
        # Not in a burst either: RQ moved the due jobs once at its start, and a scheduler process
        # forked now would be stopped moments later, before it had its own SIGTERM handler.
        scheduler = self.scheduler
        if self._stop_requested or self._burst:
            return
        if scheduler is not None and (scheduler._process is None or not scheduler._process.is_alive()):
            with self.mirror.between_writes():  # it may fork RQ's scheduler process
                scheduler.acquire_locks(auto_start=True)

    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        date_format: str = "%H:%M:%S",
        log_format: str = "%(asctime)s %(message)s",
    ) -> None:
        # RQ's own, with PromptScheduler in place of RQScheduler.
        self._burst = burst
        self.scheduler = PromptScheduler(
            self.queues,
            connection=self.connection,
            logging_level=logging_level if logging_level is not None else self.log.level,
            date_format=date_format,
            log_format=log_format,
            serializer=self.serializer,
            name=self.name,  # the reconciler frees the locks of a dead worker's scheduler by this name
        )
        self.scheduler.parent_pid = os.getpid()
        self.scheduler.acquire_locks()
        if self.scheduler.acquired_locks:
            if burst:
                try:
                    self.scheduler.register_birth()
                    self.scheduler.enqueue_scheduled_jobs()
                finally:
                    self.scheduler.release_locks()
                    self.scheduler.register_death()
            else:
                with self.mirror.between_writes():  # a fork
                    self.scheduler.start()

    def stop_scheduler(self) -> None:
        """RQ's, with a limit: SIGTERM, then SIGKILL if the scheduler process is still there
        `SCHEDULER_STOP_S` later. RQ waits for it without one, and a scheduler that never ends
        (one signalled before it installed its own handlers) would keep the worker from ending."""
        scheduler = self.scheduler
        process = scheduler._process if scheduler is not None else None
        if process is None or not process.pid:
            return
        with contextlib.suppress(OSError):
            os.kill(process.pid, signal.SIGTERM)
        process.join(SCHEDULER_STOP_S)
        if process.is_alive():
            log.warning(
                "worker %s: its scheduler (pid %d) did not stop on SIGTERM; killed", self.name, process.pid
            )
            process.kill()
            process.join()

    def unsubscribe(self) -> None:
        # RQ unsubscribes before stopping its pub/sub thread; when the thread reads the reply
        # first it goes back to a 60 s wait and the exit is held for the 1 s join. Stop first,
        # so the reply itself wakes the thread into seeing it must end.
        if self.pubsub_thread and self.pubsub is not None:
            self.pubsub_thread.stop()
            self.pubsub.unsubscribe()
            self.pubsub_thread.join(timeout=1)
            self.pubsub.close()

    # -- signs of life -------------------------------------------------------------------------

    _beat_sent = -float("inf")  # time.monotonic() of the last heartbeat sent

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        # RQ sends a heartbeat's three commands one by one; here they and the alive key share one
        # round trip (the pipeline of the caller, or one of our own). RQ also beats three times a
        # job, milliseconds apart, to renew a registration that lives two minutes: a plain beat
        # within a second of the last is left out.
        if pipeline is None and timeout is None and time.monotonic() - self._beat_sent < BEAT_AT_MOST_S:
            return
        self._beat_sent = time.monotonic()
        try:
            if pipeline is not None:
                super().heartbeat(timeout, pipeline)
                self._beat(pipeline)
                return
            with self.connection.pipeline(transaction=False) as own:
                super().heartbeat(timeout, own)
                self._beat(own)
                own.execute()
        except RedisError as exc:
            log.warning("worker %s: heartbeat lost, Redis does not answer (%s)", self.name, exc)

    def _beat(self, pipeline: Any) -> None:
        # RQ beats several times a job; the key, which lives three beats, needs renewing once a beat.
        if time.monotonic() - self._alive_renewed >= self.job_monitoring_interval:
            pipeline.set(alive_key(self.name), os.getpid(), ex=self._alive_ttl_s)
            self._alive_renewed = time.monotonic()

    @property
    def _alive_ttl_s(self) -> int:
        # Busy, it beats every job_monitoring_interval; idle, after every dequeue timeout.
        return ALIVE_BEATS * max(self.job_monitoring_interval, self.dequeue_timeout)

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)
        self.mirror.warm_up()

    def register_birth(self) -> None:
        super().register_birth()
        # Says that this worker keeps `lanes:alive:<name>`: while it lapses, the worker is dead.
        # (A worker of an older Lanes keeps none, and is judged by RQ's signs alone.)
        self.connection.hset(self.key, ALIVE_FIELD, 1)

    def register_death(self) -> None:
        with contextlib.suppress(RedisError):
            self.connection.delete(alive_key(self.name))
        super().register_death()

    # -- shutting down ---------------------------------------------------------------------------

    @property
    def asked_to_stop(self) -> bool:
        """Whether a SIGTERM or Ctrl-C asked this worker to stop."""
        return self._stop_asked_at is not None

    def request_stop(self, signum: Any, frame: Any) -> None:
        if self.pid is not None and os.getpid() != self.pid:
            # A process forked from this worker (its scheduler, a work-horse) got the signal
            # before it installed handlers of its own: the worker's stop is not its business. A
            # Ctrl-C is the worker's to handle; a SIGTERM ends it, as it would have without us.
            if signum == signal.SIGTERM:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
            return
        if self._stop_asked_at is None:
            self._stop_asked_at = time.monotonic()
        # Idle, RQ only raises StopRequested, which the main thread may be inside any code to
        # receive; were it swallowed there, the loop still ends at its next look at this flag.
        self._stop_requested = True
        super().request_stop(signum, frame)  # raises StopRequested when idle
        if self.shutdown_grace_s and self.horse_pid:
            self.job_monitoring_interval = 1  # look at the grace every second from now on

    #: Jobs taken (run, or found cancelled); `python -m worker --max-jobs` compares against it.
    jobs_taken = 0

    def execute_job(self, job: Job, queue: Queue) -> None:
        self.jobs_taken += 1
        self._idle_recorded = False  # the job makes the worker busy in Redis (RQ's own pipeline)
        if self._claim(job, queue):
            super().execute_job(job, queue)

    _claim_script: Any = None

    def _claim(self, job: Job, queue: Queue) -> bool:
        """Mark the job started unless it was cancelled; atomic against `backend.control.cancel_job`."""
        if self._claim_script is None:
            self._claim_script = self.connection.register_script(CLAIM_SCRIPT)
        keys = [job.key, cancel_flag_key(job.id), alive_key(self.name)]
        claimed = self._claim_script(keys=keys, args=[self.name, os.getpid(), self._alive_ttl_s])
        self._alive_renewed = time.monotonic()
        if claimed:
            return True
        log.info("job %s was cancelled before it started; not running it", job.id)
        self.connection.lrem(queue.intermediate_queue_key, 1, job.id)  # single-queue workers park it there
        return False

    # -- running a job (in the work-horse, where there is one) ------------------------------------

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        super().prepare_job_execution(job, remove_from_intermediate_queue)
        if _is_delivery(job):
            return
        if self._cancelled_since_claim(job):
            self._stopped_job_id = job.id
            raise JobCancelled(f"job {job.id} was cancelled before it started")
        self._record_start(job)
        set_progress_sink(self.mirror.progress_sink(job))

    def _cancelled_since_claim(self, job: Job) -> bool:
        # Cancelled after the claim but before RQ could route a stop command here: RQ routes it
        # by the worker's current job in Redis, which the job's preparation has only just set.
        return bool(self.connection.exists(cancel_flag_key(job.id)))

    def _record_start(self, job: Job) -> None:
        self.mirror.started(job, worker=self.name)

    def handle_job_success(
        self, job: Job, queue: Queue, started_job_registry: StartedJobRegistry, execution: Execution
    ) -> None:
        attempt = attempt_of(job)
        super().handle_job_success(job, queue, started_job_registry, execution)
        if not _is_delivery(job):
            self._record_success(job, attempt, job._result)

    def _record_success(self, job: Job, attempt: int, result: Any) -> None:
        self.mirror.succeeded(job, attempt=attempt, result=result)

    # -- after a job (in the work-horse, or in the worker when the horse died) ---------------------

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: Any = None,
        exc_string: str = "",
        execution: Execution | None = None,
    ) -> None:
        if self._handing_back == job.id:  # in the parent: the shutdown grace cut the job short
            self._handing_back = None
            if isinstance(job, LanesJob):
                job.handed_back = True  # its retry, if it has one left, is enqueued at once
            exc_string = (
                f"{HANDED_BACK}: its worker was stopped and the job ran past the"
                f" {self.shutdown_grace_s:g} s shutdown grace"
            )
        attempt = attempt_of(job)
        super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)
        if not _is_delivery(job):
            self.mirror.ended_badly(job, attempt=attempt, exc_string=exc_string)

    def handle_job_retry(
        self, job: Job, queue: Queue, retry: Any, started_job_registry: Any, execution: Any
    ) -> None:
        attempt = attempt_of(job)
        super().handle_job_retry(job, queue, retry, started_job_registry, execution)
        if not _is_delivery(job):
            self.mirror.ended_badly(job, attempt=attempt, exc_string="the task asked to be retried")


class LanesWorker(LanesBase, Worker):
    """The default worker: each job runs in a work-horse forked for it, which dies with the worker.

    A job that crashes its process, leaks memory or hangs in C code takes only its horse along;
    the worker records the end and goes on.
    """

    _parent_pid = 0

    # -- Redis going away (continued) --------------------------------------------------------------

    def monitor_work_horse(self, job: Job, queue: Queue, execution: Execution) -> None:
        try:
            self._watch_horse(job, queue, execution)
        finally:
            self._read_report(job)

    def _watch_horse(self, job: Job, queue: Queue, execution: Execution) -> None:
        while True:
            try:
                super().monitor_work_horse(job, queue, execution)
                return
            except RedisError as exc:
                log.warning("worker %s: Redis went away while job %s ran (%s)", self.name, job.id, exc)
            self.wait_for_redis()
            if self.horse_pid and _still_running(self.horse_pid):
                continue  # the horse runs on: watch it again
            self._horse_pid = 0
            self._settle(job, queue, execution)
            return

    # -- the horse's report ------------------------------------------------------------------------
    #
    # A horse writes nothing to SQL on a job's way to success. The worker hands the row's `started`
    # to its write-behind as it forks the horse; the horse reports the success (result, end) to the
    # worker through a pipe, and the worker hands that to the write-behind too. The horse then
    # never opens a database connection, and its SQL writes never wait on its worker's (SQLite has
    # one writer at a time). Failures, rarer, the horse still writes itself.

    _report_read = -1
    _report_write = -1

    def _open_report(self) -> None:
        self._report_read, self._report_write = os.pipe()
        os.set_blocking(self._report_read, False)  # a task's own children may hold the write end

    def _record_success(self, job: Job, attempt: int, result: Any) -> None:
        if self.is_horse and self._report_write >= 0:
            data = json.dumps({"id": job.id, **success_report(job, attempt, result)}).encode()
            if len(data) <= REPORT_MAX_BYTES:  # fits in an empty pipe: the write cannot block
                try:
                    os.write(self._report_write, data)
                    return
                except OSError:
                    log.warning("job %s: success not reported to the worker; writing it here", job.id)
        super()._record_success(job, attempt, result)

    def _read_report(self, job: Job) -> None:
        """After the horse: hand its reported success to the write-behind, or bring the row up to RQ."""
        if self._report_read < 0:
            return
        chunks = []
        try:
            while chunk := os.read(self._report_read, 65536):
                chunks.append(chunk)
        except BlockingIOError:
            pass  # a child of the task still holds the write end; what the horse wrote is here
        finally:
            os.close(self._report_read)
            self._report_read = -1
        try:
            report = json.loads(b"".join(chunks)) if chunks else None
        except ValueError:
            report = None
        self._apply_report(job, report)

    def _apply_report(self, job: Job, report: dict[str, Any] | None) -> None:
        """Hand the horse's reported success to the write-behind, or bring the row up to RQ."""
        if _is_delivery(job):
            return
        if report is not None and report.get("id") == job.id and "attempt" in report:
            if report["ended_at"]:
                job.ended_at = datetime.fromisoformat(report["ended_at"])
            self.mirror.succeeded(job, attempt=int(report["attempt"]), result=report["result"])
        else:
            # No report: the job failed (the horse wrote that itself), was stopped, or the horse
            # died after RQ recorded its end; the write-behind brings the row up to RQ's record.
            self.mirror.sync(job)

    def _settle(self, job: Job, queue: Queue, execution: Execution) -> None:
        """The horse ended while Redis was away: keep what it recorded, else retry or fail the job."""
        status = job.get_status(refresh=True)
        if status in (RQJobStatus.FINISHED, RQJobStatus.FAILED, RQJobStatus.STOPPED, RQJobStatus.CANCELED):
            self.mirror.sync(job)
            return
        log.warning("job %s ended while Redis was away and its end was not recorded", job.id)
        self.handle_job_failure(job, queue, exc_string=REDIS_LOST, execution=execution)

    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        self._hand_over_start(job)
        self._open_report()
        try:
            with self.mirror.between_writes():
                super().fork_work_horse(job, queue)
        finally:  # in the worker: the horse has the write end
            os.close(self._report_write)
            self._report_write = -1

    def _hand_over_start(self, job: Job) -> None:
        """Before the horse gets `job`: its row's `started` goes to the worker's write-behind."""
        self._parent_pid = os.getpid()
        if not _is_delivery(job):
            # The write-behind commits it while the horse runs: the horse itself writes nothing
            # to SQL on a job's way to success but its end.
            job.started_at = now()
            self.mirror.started(job, worker=self.name)

    def setup_work_horse_signals(self) -> None:
        super().setup_work_horse_signals()
        die_with_parent(self._parent_pid)  # in the horse: an orphan must not run on beside the retry
        self.mirror = self.mirror.direct()  # the worker's write-behind thread is not in the horse
        if self._report_read >= 0:
            os.close(self._report_read)
            self._report_read = -1

    def _record_start(self, job: Job) -> None:
        pass  # the worker did, as it forked the horse

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)
        # Every object of the start-up (imports, the task registry, compiled statements) out of the
        # collector's reach: a horse's collections then leave those pages shared with the worker
        # instead of copying them.
        gc.freeze()

    def teardown(self) -> None:
        if not self.is_horse:
            self.mirror.close()  # every row up to date before the worker says it is gone
        super().teardown()

    # -- shutting down (continued) -------------------------------------------------------------------

    def maintain_heartbeats(self, job: Job, execution: Execution) -> None:
        super().maintain_heartbeats(job, execution)
        asked = self._stop_asked_at
        if not self.shutdown_grace_s or asked is None or self._handing_back:
            return
        if time.monotonic() - asked >= self.shutdown_grace_s:
            log.warning(
                "job %s still runs %.0f s after the stop request; handing it back to queue %s",
                job.id,
                time.monotonic() - asked,
                job.origin,
            )
            self._handing_back = job.id
            self.kill_horse()

    # -- cancellation ---------------------------------------------------------------------------

    def kill_horse(self, sig: signal.Signals = signal.SIGKILL) -> None:
        # RQ kills `os.getpgid(self.horse_pid)`. With no horse (0: between jobs, or just reaped
        # while a second stop command for the same job arrives) that is `getpgid(0)`, the worker's
        # own process group: the worker, and whatever started it (a shell, make, a test run).
        if not self.horse_pid:
            log.info("no work-horse to stop; the stop command is ignored")
            self._stopped_job_id = None  # nothing was stopped: the job ended on its own
            return
        super().kill_horse(sig)

    def _handle_stopped_job(self, job: Job, queue: Queue, execution: Execution) -> None:
        # A stop command can land just after the horse recorded the job's success and before it
        # exited: RQ would then mark a finished job stopped (and its row already says succeeded).
        # The job was not stopped; it finished. Leave it so.
        if job.get_status() == RQJobStatus.FINISHED:
            log.info("job %s had finished before the stop command took effect; it stays finished", job.id)
            self._stopped_job_id = None
            self.mirror.sync(job)  # the horse may have died before it wrote `succeeded`
            return
        super()._handle_stopped_job(job, queue, execution)


class InterruptibleRun(UnixSignalDeathPenalty):
    """RQ's timeout alarm around a job's run, which also says which job runs (a simple worker's).

    Only while it is set may `LanesSimpleWorker` interrupt the run: never in RQ's bookkeeping
    before or after it, nor in a mirror write.
    """

    running: str | None = None  # one job at a time runs in a simple worker's process
    #: A stop for the job in hand that came before its run began: the run ends as it begins.
    stop_before_start: str | None = None

    def __init__(self, timeout: Any, exception: Any = JobTimeoutException, **kwargs: Any) -> None:
        super().__init__(timeout, exception, **kwargs)
        self._job_id = kwargs.get("job_id")

    def setup_death_penalty(self) -> None:
        job_id = self._job_id
        if job_id:
            # Say that it runs, then look for a stop; `LanesSimpleWorker._interrupt` does the
            # same the other way round, so one of the two always sees the other.
            InterruptibleRun.running = job_id
            if InterruptibleRun.stop_before_start == job_id:
                InterruptibleRun.running = InterruptibleRun.stop_before_start = None
                raise JobInterrupted(f"job {job_id} was stopped before it ran")
        super().setup_death_penalty()

    def cancel_death_penalty(self) -> None:
        InterruptibleRun.running = None
        super().cancel_death_penalty()


class LanesSimpleWorker(LanesBase, SimpleWorker):
    """The fast worker: jobs run in the worker's own process, one after another, with no fork.

    Its mirror writes go to a write-behind thread (`mirror.behind`), committed in batches; a beater
    thread keeps its heartbeat while a job runs. A cancel or the shutdown grace stops a running job
    by raising `JobInterrupted` in it. What it gives up for speed: a job that crashes the process
    (a segfault, `os._exit`, the OOM killer) takes the worker along, and the job is retried once
    the reconciler's sweep sees the worker dead; memory a job leaks stays with the worker (use
    `--max-jobs`, or `--processes`, which starts a new process when one exits).
    """

    death_penalty_class = InterruptibleRun
    _beater: threading.Thread | None = None
    _beater_stop: threading.Event
    _interrupt_for: str | None = None

    _running: Job | None = None  # the job in hand, for the beater

    def execute_job(self, job: Job, queue: Queue) -> None:
        if self._beater is None:
            sys.setswitchinterval(GIL_SWITCH_S)
            self._beater_stop = threading.Event()
            self._beater = threading.Thread(target=self._beat_while_running, name="lanes-beater", daemon=True)
            self._beater.start()
        self._running = job
        try:
            super().execute_job(job, queue)
        finally:
            self._running = InterruptibleRun.stop_before_start = None

    def _install_signal_handlers(self) -> None:
        super()._install_signal_handlers()
        signal.signal(INTERRUPT_SIGNAL, self._interrupt_run)

    # -- interrupting the running job -----------------------------------------------------------

    def get_current_job_id(self) -> str | None:
        # RQ routes a stop command by this. The job in hand is known here from its claim on, so a
        # stop that comes before its run is kept for it (`_interrupt`), and the claim needs no
        # second look at the cancel flag.
        running = self._running
        return running.id if running is not None else super().get_current_job_id()

    def _cancelled_since_claim(self, job: Job) -> bool:
        return False  # a cancel since the claim reaches `_interrupt`, which ends the run as it begins

    def kill_horse(self, sig: signal.Signals = signal.SIGKILL) -> None:
        # RQ's stop-job command (a cancel), from its pub/sub thread: there is no horse to kill,
        # so the job itself is interrupted.
        job_id = self._stopped_job_id
        if job_id is None or not self._interrupt(job_id):
            log.info("no job of this worker to stop; the stop command is ignored")
            self._stopped_job_id = None

    def _interrupt(self, job_id: str) -> bool:
        """Raise `JobInterrupted` in job `job_id`'s run, now or as it begins; from any thread.

        False if `job_id` is not the job in hand.
        """
        running = self._running
        if running is None or running.id != job_id:
            return False
        self._interrupt_for = InterruptibleRun.stop_before_start = job_id
        if InterruptibleRun.running == job_id:
            signal.pthread_kill(threading.main_thread().ident or 0, INTERRUPT_SIGNAL)
        return True

    def _interrupt_run(self, signum: int, frame: Any) -> None:
        job_id, self._interrupt_for = self._interrupt_for, None
        if job_id is not None and job_id == InterruptibleRun.running:
            reason = "handed back" if self._handing_back == job_id else "stopped"
            raise JobInterrupted(f"job {job_id} was {reason} while it ran")

    # -- signs of life while a job runs -----------------------------------------------------------

    def _beat_while_running(self) -> None:
        """Beat every `job_monitoring_interval` while a job runs, and apply the shutdown grace."""
        last_beat = time.monotonic()
        while not self._beater_stop.wait(BEAT_TICK_S):
            job, execution = self._running, self.execution
            if job is None or execution is None or InterruptibleRun.running != job.id:
                last_beat = time.monotonic()
                continue
            if time.monotonic() - last_beat >= self.job_monitoring_interval:
                last_beat = time.monotonic()
                try:
                    self.maintain_heartbeats(job, execution)
                except RedisError as exc:
                    log.warning("worker %s: heartbeat lost, Redis does not answer (%s)", self.name, exc)
            asked = self._stop_asked_at
            grace_over = asked is not None and time.monotonic() - asked >= self.shutdown_grace_s
            if self.shutdown_grace_s and grace_over and not self._handing_back:
                log.warning(
                    "job %s still runs %.0f s after the stop request; handing it back to queue %s",
                    job.id, time.monotonic() - (asked or 0.0), job.origin,
                )  # fmt: skip
                self._handing_back = job.id
                self._interrupt(job.id)

    def teardown(self) -> None:
        if self._beater is not None:
            self._beater_stop.set()
        self.mirror.close()  # every row up to date before the worker says it is gone
        super().teardown()


def _still_running(pid: int) -> bool:
    """Whether our child `pid` runs on (reaping it if it has ended)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == 0


def success_report(job: Job, attempt: int, result: Any) -> dict[str, Any]:
    """What a work-horse reports of a success for the worker to write: `_apply_report` reads it."""
    return {
        "attempt": attempt,
        "result": result,
        "ended_at": job.ended_at.isoformat() if job.ended_at else None,
    }


def _is_delivery(job: Job) -> bool:
    """A webhook delivery: it has no row of its own, and its outcome is in `webhook_deliveries`."""
    return job.origin == WEBHOOK_QUEUE
