"""`LanesWorker`: RQ's forking worker, draining queues in strict order, mirroring to SQL.

Mirror writes hook in after RQ has persisted each step, and never raise: RQ re-runs a job whose
success path raises, so nothing here may fail a job. The hooks run in the work-horse for the
start, success and failure of a job, and in the parent when the horse dies unexpectedly. Webhook
deliveries (the `webhooks` queue) are run but not mirrored: they have no row of their own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from typing import Any

from redis.exceptions import RedisError
from rq import Worker
from rq.exceptions import StopRequested
from rq.executions import Execution
from rq.job import Job
from rq.job import JobStatus as RQJobStatus
from rq.queue import Queue
from rq.registry import StartedJobRegistry
from rq.scheduler import RQScheduler

from backend.control import CLAIM_SCRIPT
from backend.enums import WEBHOOK_QUEUE
from backend.queues import (
    ALIVE_BEATS,
    ALIVE_FIELD,
    IDLE_QUEUE,
    PAUSED_KEY,
    LanesJob,
    alive_key,
    attempt_of,
    cancel_flag_key,
    queue_for,
)
from backend.sync import JobMirror
from backend.tasks.reporting import set_progress_sink
from worker.lifeline import die_with_parent

log = logging.getLogger(__name__)

STOP_CHECK_S = 0.1  # how often a sleeping scheduler looks for a stop request
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


class LanesWorker(Worker):
    """An RQ worker with SQL mirror hooks. Set `mirror`, `poll_s` and `shutdown_grace_s` before `work()`.

    Its heartbeat (every `job_monitoring_interval` while busy) also sets `lanes:alive:<name>` for
    three beats, so the reconciler's sweep can retry a dead worker's job within seconds. Its
    children die with it. On SIGTERM it finishes the running job, or after `shutdown_grace_s`
    hands the job back to its queue (attempt counted), and exits.
    """

    mirror: JobMirror
    poll_s: int = 5
    shutdown_grace_s: float = 0.0
    _stop_asked_at: float | None = None
    _handing_back: str | None = None
    _parent_pid = 0

    @property
    def dequeue_timeout(self) -> int:
        # Wake up every `poll_s` while idle so failed mirror writes are replayed promptly.
        return max(1, min(self.poll_s, self.worker_ttl - 15))

    _last_replay: float = 0.0

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

    def set_state(self, state: Any, pipeline: Any = None) -> None:
        try:
            super().set_state(state, pipeline)
        except RedisError as exc:
            log.warning("worker %s: state %s not recorded, Redis does not answer (%s)", self.name, state, exc)

    def monitor_work_horse(self, job: Job, queue: Queue, execution: Execution) -> None:
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

    def _settle(self, job: Job, queue: Queue, execution: Execution) -> None:
        """The horse ended while Redis was away: keep what it recorded, else retry or fail the job."""
        status = job.get_status(refresh=True)
        if status in (RQJobStatus.FINISHED, RQJobStatus.FAILED, RQJobStatus.STOPPED, RQJobStatus.CANCELED):
            self.mirror.sync(job)
            return
        log.warning("job %s ended while Redis was away and its end was not recorded", job.id)
        self.handle_job_failure(job, queue, exc_string=REDIS_LOST, execution=execution)

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
        scheduler = self.scheduler
        if self._stop_requested:
            return
        if scheduler is not None and (scheduler._process is None or not scheduler._process.is_alive()):
            scheduler.acquire_locks(auto_start=True)

    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: str | None = "INFO",
        date_format: str = "%H:%M:%S",
        log_format: str = "%(asctime)s %(message)s",
    ) -> None:
        # RQ's own, with PromptScheduler in place of RQScheduler.
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
                self.scheduler.start()

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

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        # RQ sends a heartbeat's three commands one by one; here they and the alive key share one
        # round trip (the pipeline of the caller, or one of our own).
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

    def _beat(self, pipeline: Any = None) -> None:
        connection = pipeline if pipeline is not None else self.connection
        # Busy, it beats every job_monitoring_interval; idle, after every dequeue timeout.
        beat_s = max(self.job_monitoring_interval, self.dequeue_timeout)
        connection.set(alive_key(self.name), os.getpid(), ex=ALIVE_BEATS * beat_s)

    def register_birth(self) -> None:
        super().register_birth()
        # Says that this worker keeps `lanes:alive:<name>`: while it lapses, the worker is dead.
        # (A worker of an older Lanes keeps none, and is judged by RQ's signs alone.)
        self.connection.hset(self.key, ALIVE_FIELD, 1)

    def register_death(self) -> None:
        with contextlib.suppress(RedisError):
            self.connection.delete(alive_key(self.name))
        super().register_death()

    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        self._parent_pid = os.getpid()
        super().fork_work_horse(job, queue)

    def setup_work_horse_signals(self) -> None:
        super().setup_work_horse_signals()
        die_with_parent(self._parent_pid)  # in the horse: an orphan must not run on beside the retry

    # -- shutting down ---------------------------------------------------------------------------

    @property
    def asked_to_stop(self) -> bool:
        """Whether a SIGTERM or Ctrl-C asked this worker to stop."""
        return self._stop_asked_at is not None

    def request_stop(self, signum: Any, frame: Any) -> None:
        if self._stop_asked_at is None:
            self._stop_asked_at = time.monotonic()
        super().request_stop(signum, frame)  # raises StopRequested when idle
        if self.shutdown_grace_s and self.horse_pid:
            self.job_monitoring_interval = 1  # look at the grace every second from now on

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

    #: Jobs taken (run, or found cancelled); `python -m worker --max-jobs` compares against it.
    jobs_taken = 0

    def execute_job(self, job: Job, queue: Queue) -> None:
        self.jobs_taken += 1
        try:  # an idle worker beats only once a poll; the job must not look abandoned
            self._beat()
        except RedisError as exc:
            log.warning("worker %s: alive key not renewed, Redis does not answer (%s)", self.name, exc)
        if self._claim(job, queue):
            super().execute_job(job, queue)

    def _claim(self, job: Job, queue: Queue) -> bool:
        """Mark the job started unless it was cancelled; atomic against `backend.control.cancel_job`."""
        claim = self.connection.register_script(CLAIM_SCRIPT)
        if claim(keys=[job.key, cancel_flag_key(job.id)], args=[self.name]):
            return True
        log.info("job %s was cancelled before it started; not running it", job.id)
        self.connection.lrem(queue.intermediate_queue_key, 1, job.id)  # single-queue workers park it there
        return False

    # -- in the work-horse -----------------------------------------------------------------------

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        super().prepare_job_execution(job, remove_from_intermediate_queue)
        if _is_delivery(job):
            return
        if self.connection.exists(cancel_flag_key(job.id)):
            # Cancelled after the claim but before RQ could route a stop command to this horse.
            self._stopped_job_id = job.id
            raise JobCancelled(f"job {job.id} was cancelled before it started")
        self.mirror.started(job, worker=self.name)
        set_progress_sink(self.mirror.progress_sink(job))

    def handle_job_success(
        self, job: Job, queue: Queue, started_job_registry: StartedJobRegistry, execution: Execution
    ) -> None:
        attempt = attempt_of(job)
        super().handle_job_success(job, queue, started_job_registry, execution)
        if not _is_delivery(job):
            self.mirror.succeeded(job, attempt=attempt, result=job._result)

    # -- in the work-horse, or in the parent when the horse died ------------------------------

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


def _still_running(pid: int) -> bool:
    """Whether our child `pid` runs on (reaping it if it has ended)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == 0


def _is_delivery(job: Job) -> bool:
    """A webhook delivery: it has no row of its own, and its outcome is in `webhook_deliveries`."""
    return job.origin == WEBHOOK_QUEUE
