"""The standing work-horse: a forking worker whose horse runs job after job (LANES_HORSE_JOBS > 1).

`StandingHorseWorker` forks a horse for a job and keeps it: each later job goes to the same horse
through a pipe, the horse runs it as RQ's does (`perform_job`, under the job's own timeout alarm),
and it reports the job's end back through a second pipe. After `horse_jobs` jobs, or when the horse
dies, the next job gets a fresh horse. A worker that holds SQLAlchemy, pydantic and the task
registry costs several milliseconds to fork, exit and reap, and each new horse copy-on-write faults
in the pages it touches; a standing horse pays that once every `horse_jobs` jobs.

Whatever kills a horse kills it as in `LanesWorker`, and the worker sees it the same way: the report
pipe's end (or the horse's pidfd) says the horse died, the worker reaps it, and RQ's own
`monitor_work_horse` decides the job's end from the exit status. A crash fails or retries the job
at once, a cancel stops it, the timeout backstop and the shutdown grace end it, and the next job
gets a new horse. Between jobs the horse waits on its pipe; the worker ends it when it has run its
jobs, when the worker exits, or by dying (`die_with_parent`).

Both pipes carry frames, a 4-byte big-endian length and a JSON object:

    worker -> horse   {"job": id, "queue": name, "execution": id, "created_at": epoch seconds}
                      {"started": execution id}, once the job's `started` is committed
                      {"quit": true}
    horse -> worker   {"id": job id}, one per job, after RQ recorded its end; a success adds
                      "attempt", "result" and "ended_at" for the worker's write-behind

A success whose frame would pass `REPORT_MAX_BYTES` the horse writes to SQL itself, as failures.
Those writes (and progress) must land after the job's `started`, which the worker's write-behind
commits a few milliseconds after it hands the job over; a forked horse used to start later than
that, a standing one starts at once. So the write-behind tells the horse when `started` is
committed, and the horse opens no SQL session for the job before it is told (`START_WAIT_S` at
most: after that the row is the replay's, from RQ's record).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import select
import signal
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.timeouts import UnixSignalDeathPenalty
from rq.worker.base import logger as rq_worker_logger

from backend.queues import queue_for
from worker.worker import REPORT_MAX_BYTES, LanesBase, LanesWorker, _is_delivery, success_report

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
READ_CHUNK = 65536
#: How long a horse that was asked to quit may take before it is killed.
RETIRE_WAIT_S = 5.0
#: Where the OS has no pidfd: how often the worker looks whether its horse is still alive.
POLL_S = 0.5
#: The longest a horse waits to be told that its job's `started` is committed before it writes.
START_WAIT_S = 5.0

Reaped = tuple[int | None, int | None, Any]  # os.wait4's (pid, status, rusage); Nones: reaped elsewhere


class HorseWatch(UnixSignalDeathPenalty):
    """RQ's alarm; in the worker it waits out a read of the horse's report pipe before it rings.

    RQ's monitor wakes from waiting on its horse by this alarm's exception, to beat. Raised between
    a read from the pipe and the keeping of what it read, it would lose a report: while held, a
    ring is kept and raised when the hold ends. In a horse (a job's timeout) nothing holds it.
    """

    _held = False
    _rang: HorseWatch | None = None

    def handle_death_penalty(self, signum: Any, frame: Any) -> None:
        if HorseWatch._held:
            HorseWatch._rang = self
            return
        super().handle_death_penalty(signum, frame)

    @staticmethod
    @contextlib.contextmanager
    def held() -> Iterator[None]:
        HorseWatch._held = True
        try:
            yield
        finally:
            HorseWatch._held = False
            rang, HorseWatch._rang = HorseWatch._rang, None
        if rang is not None:
            rang.handle_death_penalty(signal.SIGALRM, None)


@dataclass
class Horse:
    """The worker's end of its standing horse."""

    pid: int
    jobs: int  # the job pipe's write end
    reports: int  # the report pipe's read end, non-blocking
    pidfd: int  # readable once the horse has exited; -1 where the OS has none
    served: int = 1  # jobs handed to it, the one it was forked with included
    received: bytearray = field(default_factory=bytearray)
    eof: bool = False
    reaped: Reaped | None = None
    #: The write-behind's thread sends too: no send may find the descriptor closed (or reused).
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, message: dict[str, Any]) -> None:
        """One frame to the horse (small: the write is atomic); OSError if it has gone."""
        with self.lock:
            if self.jobs < 0:
                raise BrokenPipeError("the horse was retired")
            _write_all(self.jobs, _frame(json.dumps(message)))

    def take_report(self) -> dict[str, Any] | None:
        """The next whole report the horse wrote, if one has come."""
        if len(self.received) < _LENGTH.size:
            return None
        (size,) = _LENGTH.unpack_from(self.received)
        if len(self.received) < _LENGTH.size + size:
            return None
        body = bytes(self.received[_LENGTH.size : _LENGTH.size + size])
        del self.received[: _LENGTH.size + size]
        report: dict[str, Any] = json.loads(body)
        return report

    def wait(self, timeout_s: float | None = None) -> None:
        """Until the horse writes or ends (or `timeout_s` passes; POLL_S at most without a pidfd)."""
        watched = [self.reports] if self.pidfd < 0 else [self.reports, self.pidfd]
        if self.pidfd < 0:
            timeout_s = POLL_S if timeout_s is None else min(timeout_s, POLL_S)
        select.select(watched, [], [], timeout_s)

    def read(self) -> bool:
        """Take what the horse wrote; False if there was nothing (the pipe may have ended)."""
        try:
            chunk = os.read(self.reports, READ_CHUNK)
        except BlockingIOError:
            return False
        if not chunk:
            self.eof = True
            return False
        self.received += chunk
        return True

    def reap(self, *, block: bool) -> bool:
        """Reap the horse if it has ended (waiting for it with `block`); whether it is reaped."""
        if self.reaped is not None:
            return True
        try:
            pid, status, rusage = os.wait4(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:  # reaped already, by a look elsewhere
            self.reaped = (None, None, None)
            return True
        if pid == 0:
            return False
        self.reaped = (pid, status, rusage)
        return True

    def close(self) -> None:
        with self.lock:
            for fd in (self.jobs, self.reports, self.pidfd):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self.jobs = self.reports = self.pidfd = -1


class StandingHorseWorker(LanesWorker):
    """A forking worker whose horse runs up to `horse_jobs` jobs, one after another.

    Set `horse_jobs` before `work()`. Everything else is `LanesWorker`'s: the claim, the mirror's
    `started` handed to the write-behind, the report of a success, the crash, cancel, timeout and
    shutdown paths.
    """

    death_penalty_class = HorseWatch
    horse_jobs = 100
    _horse: Horse | None = None  # in the worker: its standing horse, between jobs too
    _report: dict[str, Any] | None = None  # in the worker: what the horse reported of the job in hand
    _jobs_in = -1  # in the horse: the job pipe's read end
    _reports_out = -1  # in the horse: the report pipe's write end
    _success: str | None = None  # in the horse: the job's success, JSON, for its report
    _awaited: str | None = None  # in the horse: the execution whose `started` it must be told of

    # -- the worker's side ---------------------------------------------------------------------------

    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        self._report = None
        self._hand_over_start(job)
        os.environ["RQ_WORKER_ID"] = self.name
        os.environ["RQ_JOB_ID"] = job.id
        horse = self._horse
        if horse is None or horse.served >= self.horse_jobs or not self._give(horse, job, queue):
            if horse is not None:
                self._retire(horse)
            self._fork(job, queue)
        self._tell_when_started(job)

    def _tell_when_started(self, job: Job) -> None:
        """Have the write-behind tell the horse once the job's `started` is committed."""
        horse, execution = self._horse, self._execution_of(job)
        if horse is None or execution is None or _is_delivery(job):
            return
        told = {"started": execution.id}

        def tell() -> None:
            with contextlib.suppress(OSError):  # the horse has gone, and the job with it
                horse.send(told)

        behind = self.mirror.behind
        if behind is None:
            tell()
        else:
            behind.after(tell)

    def _give(self, horse: Horse, job: Job, queue: Queue) -> bool:
        """Hand `job` to the standing horse; False if it died since its last job."""
        execution = self._execution_of(job)
        if horse.reap(block=False) or execution is None:
            return False
        message = {
            "job": job.id,
            "queue": queue.name,
            "execution": execution.id,
            "created_at": execution.created_at.timestamp(),
        }
        try:
            horse.send(message)
        except OSError:  # it died just now
            return False
        horse.served += 1
        self._horse_pid = horse.pid
        self.procline(f"Handed {job.id} to {horse.pid} at {time.time()}")
        return True

    def _fork(self, job: Job, queue: Queue) -> None:
        jobs_in, jobs_out = os.pipe()
        reports_in, reports_out = os.pipe()
        with self.mirror.between_writes():
            pid = os.fork()
            if pid == 0:
                os.setpgrp()
                os.close(jobs_out)
                os.close(reports_in)
                self._jobs_in, self._reports_out = jobs_in, reports_out
                self.main_work_horse(job, queue)
                os._exit(0)  # as RQ's: never reached
        os.close(jobs_in)
        os.close(reports_out)
        os.set_blocking(reports_in, False)  # a child of a task may hold the write end: never wait on it
        self._horse = Horse(pid=pid, jobs=jobs_out, reports=reports_in, pidfd=_pidfd(pid))
        self._horse_pid = pid
        self.procline(f"Forked {pid} at {time.time()}")

    def wait_for_horse(self) -> Reaped:
        # RQ's monitor calls this under its alarm, which interrupts the wait to beat. A report of
        # the job in hand answers as the exit of a horse that ran it would (status 0) while the
        # horse lives on; the horse's end answers with its reaped status, as RQ's own does.
        horse = self._horse
        if horse is None:
            return super().wait_for_horse()
        while True:
            with HorseWatch.held():
                if self._report is None:
                    self._report = horse.take_report()
                if self._report is not None:
                    return horse.pid, os.EX_OK, None
                if horse.reaped is not None:
                    self._horse = None
                    horse.close()
                    return horse.reaped
            horse.wait()
            with HorseWatch.held():
                if not horse.read():  # nothing to read: the pipe ended, the horse exited, or a beat is due
                    horse.reap(block=horse.eof)

    def monitor_work_horse(self, job: Job, queue: Queue, execution: Any) -> None:
        try:
            super().monitor_work_horse(job, queue, execution)
        finally:
            horse = self._horse
            if horse is not None and (horse.served >= self.horse_jobs or horse.reaped is not None):
                self._retire(horse)

    def _read_report(self, job: Job) -> None:
        report, self._report = self._report, None
        self._apply_report(job, report)

    def _retire(self, horse: Horse) -> None:
        """End the standing horse (idle, or dead already) and reap it."""
        self._horse = None
        if not horse.reap(block=False):
            with contextlib.suppress(OSError):
                horse.send({"quit": True})
            deadline = time.monotonic() + RETIRE_WAIT_S
            while not horse.reap(block=False):
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("worker %s: horse %d did not quit; killing it", self.name, horse.pid)
                    with contextlib.suppress(OSError):
                        os.killpg(horse.pid, signal.SIGKILL)
                    horse.reap(block=True)
                    break
                horse.wait(left)
        horse.close()

    def teardown(self) -> None:
        if not self.is_horse and self._horse is not None:
            self._retire(self._horse)
        super().teardown()

    def _execution_of(self, job: Job) -> Execution | None:
        """The execution `prepare_execution` made for `job` (RQ takes the first of `executions`)."""
        mine = [execution for execution in self.executions.values() if execution.job_id == job.id]
        return mine[-1] if mine else None

    # -- the horse's side --------------------------------------------------------------------------

    def main_work_horse(self, job: Job, queue: Queue) -> None:
        # RQ's, run for each job the worker hands over until it says quit (or goes away).
        random.seed()
        self.setup_work_horse_signals()
        self._is_horse = True
        self.log = rq_worker_logger
        execution = self._execution_of(job)
        try:
            while execution is not None:
                self._run(job, queue, execution)
                given = self._next_job()
                if given is None:
                    break
                job, queue, execution = given
        except BaseException:
            os._exit(1)
        os._exit(0)

    def setup_work_horse_signals(self) -> None:
        super().setup_work_horse_signals()  # the mirror is the horse's own from here on
        sessions = _AfterStart(self.mirror.sessions, self._await_start)
        self.mirror.sessions = cast(Any, sessions)

    def _run(self, job: Job, queue: Queue, execution: Execution) -> None:
        # What a horse forked for the job would start with.
        self._stopped_job_id = None
        self._handing_back = None
        self._success = None
        self._awaited = None if _is_delivery(job) else execution.id
        self.executions = {execution.id: execution}
        os.environ["RQ_JOB_ID"] = job.id
        self.perform_job(job, queue, execution)
        report = f'{{"id": {json.dumps(job.id)}{self._success or ""}}}'
        _write_all(self._reports_out, _frame(report))

    def _next_job(self) -> tuple[Job, Queue, Execution] | None:
        """Wait for the worker's next job; None when it says quit or has gone."""
        message = _read_frame(self._jobs_in)
        while message is not None and "started" in message:  # of a job that wrote nothing
            message = _read_frame(self._jobs_in)
        if message is None or message.get("quit"):
            return None
        job = self.job_class.fetch(message["job"], connection=self.connection, serializer=self.serializer)
        queue = next((q for q in self.queues if q.name == message["queue"]), None)
        if queue is None:
            queue = queue_for(message["queue"], self.connection)
        execution = Execution(message["execution"], job.id, connection=self.connection, worker_name=self.name)
        execution.created_at = execution.last_heartbeat = datetime.fromtimestamp(message["created_at"], UTC)
        execution._job = job
        return job, queue, execution

    def _await_start(self) -> None:
        """Before the horse's first SQL session for its job: until it is told `started` is committed."""
        awaited, self._awaited = self._awaited, None
        if awaited is None:
            return
        deadline = time.monotonic() + START_WAIT_S
        while (left := deadline - time.monotonic()) > 0 and select.select([self._jobs_in], [], [], left)[0]:
            message = _read_frame(self._jobs_in)
            if message is None or message.get("started") == awaited:
                return  # told (or the worker has gone: this horse is about to)
        log.warning(
            "horse %d: not told within %.0f s that the job's start is recorded", os.getpid(), START_WAIT_S
        )

    def _record_success(self, job: Job, attempt: int, result: Any) -> None:
        if self.is_horse:
            success = json.dumps(success_report(job, attempt, result))
            if len(success) <= REPORT_MAX_BYTES:
                self._success = ", " + success[1:-1]  # its fields, added to the report's
                return
        LanesBase._record_success(self, job, attempt, result)


class _AfterStart:
    """The horse's SQL session factory: no session before the job's `started` is committed."""

    def __init__(self, sessions: Any, await_start: Any) -> None:
        self._sessions = sessions
        self._await_start = await_start

    def __call__(self) -> Any:
        self._await_start()
        return self._sessions()


def _frame(body: str) -> bytes:
    data = body.encode()
    return _LENGTH.pack(len(data)) + data


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exactly(fd: int, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _read_frame(fd: int) -> dict[str, Any] | None:
    """The next frame on a blocking pipe; None at its end."""
    head = _read_exactly(fd, _LENGTH.size)
    if head is None:
        return None
    (size,) = _LENGTH.unpack(head)
    body = _read_exactly(fd, size)
    if body is None:
        return None
    message: dict[str, Any] = json.loads(body)
    return message


def _pidfd(pid: int) -> int:
    """A descriptor that becomes readable when child `pid` exits; -1 where the OS has none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return -1
