"""`python -m worker [QUEUE ...] [--name NAME] [--burst] [--mode M] [--horse-jobs N] [--processes N]`.

Runs a Lanes worker. Queues are drained in the order given (default `high webhooks normal low`).
`--mode` (LANES_WORKER_MODE) says how jobs run: `fork`, in a work-horse process that runs
`--horse-jobs` (LANES_HORSE_JOBS) jobs before a new one is forked, or `simple`, in the worker's
process; `--processes` (LANES_WORKER_PROCESSES) runs that many worker processes under a supervisor
(`worker.pool`). SIGTERM or Ctrl-C lets the current job finish, then
the worker exits; a second signal stops it at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import uuid
from functools import partial

from redis import Redis
from redis.exceptions import RedisError
from rq.serializers import JSONSerializer
from sqlalchemy import Engine

from backend.config import Settings, get_settings
from backend.db import engine_for, make_sessionmaker
from backend.enums import WORKER_QUEUES
from backend.logs import configure_logging
from backend.queues import LanesJob, alive_key, all_queues, redis_for
from backend.sync import JobMirror
from backend.tasks import registry
from backend.writebehind import WriteBehind
from worker.lifeline import die_with_parent
from worker.pool import SUPERVISOR_ENV, Pool
from worker.standing import StandingHorseWorker
from worker.worker import LanesBase, LanesSimpleWorker, LanesWorker

log = logging.getLogger("worker")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker", description="Run a Lanes worker.")
    parser.add_argument(
        "queues", nargs="*", help="queues in priority order (default: high webhooks normal low); commas work"
    )
    parser.add_argument("--name", help="worker name (default: a random hex id)")
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    parser.add_argument("--max-jobs", type=int, help="exit after this many jobs")
    parser.add_argument(
        "--mode",
        choices=("fork", "simple"),
        help="fork: each job in a process of its own; simple: in the worker's (default: LANES_WORKER_MODE)",
    )
    parser.add_argument(
        "--horse-jobs",
        type=int,
        help="fork mode: jobs one work-horse runs before a new one is forked (default: LANES_HORSE_JOBS)",
    )
    parser.add_argument(
        "--processes", type=int, help="worker processes to run and restart (default: LANES_WORKER_PROCESSES)"
    )
    args = parser.parse_args(argv)
    if args.processes is not None and args.processes < 1:
        parser.error("--processes must be at least 1")
    if args.max_jobs is not None and args.max_jobs < 1:
        parser.error("--max-jobs must be at least 1")
    if args.horse_jobs is not None and args.horse_jobs < 1:
        parser.error("--horse-jobs must be at least 1")
    return args


def queue_names(raw: list[str]) -> list[str]:
    names = [name.strip() for item in raw for name in item.replace(",", " ").split() if name.strip()]
    return names or list(WORKER_QUEUES)


def build_worker(
    settings: Settings,
    *,
    queues: list[str],
    name: str | None = None,
    redis: Redis | None = None,
    engine: Engine | None = None,
    mode: str | None = None,
    horse_jobs: int | None = None,
) -> LanesBase:
    """A worker of `mode` (default: the settings') whose horses run `horse_jobs` jobs each (default:
    the settings'), with a Redis client and SQL engine of this process (made here unless given)."""
    registry.load_modules(settings.task_module_names())
    redis = redis if redis is not None else redis_for(settings, socket_timeout_s=None)
    engine = engine if engine is not None else engine_for(settings)
    simple = (mode or settings.worker_mode) == "simple"
    horse_jobs = horse_jobs or settings.horse_jobs
    worker_class: type[LanesBase] = LanesSimpleWorker if simple else LanesWorker
    if not simple and horse_jobs > 1:
        worker_class = StandingHorseWorker
    worker = worker_class(
        all_queues(redis, queues),
        name=name,
        connection=redis,
        job_class=LanesJob,
        serializer=JSONSerializer,
        worker_ttl=settings.worker_ttl_s,
        job_monitoring_interval=settings.worker_heartbeat_s,
        default_result_ttl=settings.result_ttl_s,
        log_job_description=False,  # RQ would log each job's params; Lanes logs id, task and queue
    )
    worker.poll_s = settings.worker_poll_s
    if isinstance(worker, StandingHorseWorker):
        worker.horse_jobs = horse_jobs
    worker.shutdown_grace_s = settings.worker_shutdown_grace_s
    sessions = make_sessionmaker(engine)
    worker.mirror = JobMirror(
        sessions=sessions,
        redis=redis,
        progress_min_interval_s=settings.progress_min_interval_s,
        settings=settings,
        # Writes are committed in batches off the job's path (a work-horse writes its own at once).
        behind=WriteBehind(sessions=sessions, redis=redis),
    )
    return worker


def forget(settings: Settings, name: str) -> None:
    """Drop the liveness key of worker `name`, whose process is known to have died: the
    reconciler's next sweep then retries its job instead of waiting for the key to lapse."""
    try:
        redis = redis_for(settings)
        try:
            redis.delete(alive_key(name))
        finally:
            redis.close()
    except RedisError as exc:  # the key lapses on its own within three beats
        log.warning("worker %s died; its liveness key could not be dropped (%s)", name, exc)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    processes = args.processes or settings.worker_processes
    if processes > 1:
        name = args.name or uuid.uuid4().hex[:8]
        pool = Pool(processes, name, _child_args(args), burst=args.burst, on_death=partial(forget, settings))
        sys.exit(pool.run())
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if supervisor:  # started by a pool: end with it
        die_with_parent(int(supervisor))
    name = args.name
    redis, engine = redis_for(settings, socket_timeout_s=None), engine_for(settings)
    while True:
        worker = build_worker(
            settings,
            queues=queue_names(args.queues),
            name=name,
            redis=redis,
            engine=engine,
            mode=args.mode,
            horse_jobs=args.horse_jobs,
        )
        log.info("worker %s on queues %s", worker.name, ", ".join(worker.queue_names()))
        try:
            worker.work(
                burst=args.burst,
                max_jobs=args.max_jobs,
                with_scheduler=True,
                logging_level=settings.log_level,
            )
        except RedisError as exc:  # from RQ's teardown, which cannot record the end with Redis away
            log.warning("worker %s could not record its end (%s)", worker.name, exc)
        asked_to_end = worker.asked_to_stop or args.burst
        if asked_to_end or (args.max_jobs is not None and worker.jobs_taken >= args.max_jobs):
            return
        # RQ ended the worker on an error (Redis going away where RQ does not wait for it): the
        # process stays, waits for Redis, and works again under the same name.
        name = worker.name
        log.warning("worker %s stopped on an error; it starts again when Redis answers", name)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # no job runs now: a stop may end it at once
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        worker.wait_for_redis()
        worker.connection.delete(worker.key)  # its own stale registration, which RQ could not end


def _child_args(args: argparse.Namespace) -> list[str]:
    """The command line of each process of a pool, but for its name."""
    child = list(args.queues)
    if args.burst:
        child.append("--burst")
    if args.max_jobs is not None:
        child += ["--max-jobs", str(args.max_jobs)]
    if args.mode:
        child += ["--mode", args.mode]
    if args.horse_jobs is not None:
        child += ["--horse-jobs", str(args.horse_jobs)]
    return child


if __name__ == "__main__":
    main()
