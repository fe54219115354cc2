"""`LanesWorker`: RQ's forking worker, draining queues in strict order, mirroring to SQL.

Mirror writes hook in after RQ has persisted each step, and never raise: RQ re-runs a job whose
success path raises, so nothing here may fail a job. The hooks run in the work-horse for the
start, success and failure of a job, and in the parent when the horse dies unexpectedly.
"""

from __future__ import annotations

import logging
from typing import Any

from rq import Worker
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.registry import StartedJobRegistry

from backend.queues import attempt_of
from backend.sync import JobMirror
from backend.tasks.reporting import set_progress_sink

log = logging.getLogger(__name__)


class LanesWorker(Worker):
    """An RQ worker with SQL mirror hooks. Set `mirror` and `poll_s` before `work()`."""

    mirror: JobMirror
    poll_s: int = 5

    @property
    def dequeue_timeout(self) -> int:
        # Wake up every `poll_s` while idle so failed mirror writes are replayed promptly.
        return max(1, min(self.poll_s, self.worker_ttl - 15))

    @property
    def should_run_maintenance_tasks(self) -> bool:
        return True  # cheap: our part is one SRANDMEMBER; RQ's part keeps its own interval

    def run_maintenance_tasks(self) -> None:
        self.mirror.replay_pending()
        if super().should_run_maintenance_tasks:
            super().run_maintenance_tasks()

    # -- in the work-horse -----------------------------------------------------------------------

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        super().prepare_job_execution(job, remove_from_intermediate_queue)
        self.mirror.started(job, worker=self.name)
        set_progress_sink(self.mirror.progress_sink(job))

    def handle_job_success(
        self, job: Job, queue: Queue, started_job_registry: StartedJobRegistry, execution: Execution
    ) -> None:
        attempt = attempt_of(job)
        super().handle_job_success(job, queue, started_job_registry, execution)
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
        attempt = attempt_of(job)
        super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)
        self.mirror.ended_badly(job, attempt=attempt, exc_string=exc_string)

    def handle_job_retry(
        self, job: Job, queue: Queue, retry: Any, started_job_registry: Any, execution: Any
    ) -> None:
        attempt = attempt_of(job)
        super().handle_job_retry(job, queue, retry, started_job_registry, execution)
        self.mirror.ended_badly(job, attempt=attempt, exc_string="the task asked to be retried")
