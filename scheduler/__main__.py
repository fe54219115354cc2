"""`python -m scheduler [--name NAME] [--burst] [--no-housekeeping]`: run the scheduler daemon.

It fires due cron schedules (rq-scheduler's loop at `LANES_SCHEDULER_INTERVAL_S`), re-syncs Redis
from the schedules table every `LANES_SCHEDULER_SYNC_S`, and runs the reconciler and the prune on
their timers. Run one or several: each firing happens once. SIGTERM or Ctrl-C ends it after the
pass under way; a second signal ends it at once.
"""

from __future__ import annotations

import argparse
import logging

from backend.config import Settings, get_settings
from backend.db import engine_for, make_sessionmaker
from backend.logs import configure_logging
from backend.queues import redis_for
from backend.tasks import registry
from scheduler.housekeeping import Housekeeping
from scheduler.scheduler import LanesScheduler

log = logging.getLogger("scheduler")

#: How long an exiting scheduler waits for a housekeeping run under way to end.
HOUSEKEEPING_JOIN_S = 5.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scheduler", description="Run the Lanes scheduler.")
    parser.add_argument("--name", help="scheduler name (default: host.pid.random)")
    parser.add_argument("--burst", action="store_true", help="sync and fire what is due once, then exit")
    parser.add_argument(
        "--no-housekeeping", action="store_true", help="do not run the reconciler and the prune on timers"
    )
    return parser.parse_args(argv)


def build_scheduler(settings: Settings, *, name: str | None = None) -> LanesScheduler:
    """A scheduler with its own Redis client and SQL engine, built in this process."""
    registry.load_modules(settings.task_module_names())
    redis = redis_for(settings)
    engine = engine_for(settings)
    return LanesScheduler(
        redis=redis, sessions=make_sessionmaker(engine), settings=settings, tasks=registry, name=name
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    scheduler = build_scheduler(settings, name=args.name)
    housekeeping = None
    if not (args.burst or args.no_housekeeping):
        housekeeping = Housekeeping(
            redis=scheduler.connection,
            sessions=scheduler.sessions,
            settings=settings,
            stopping=scheduler.stopping,
            status=scheduler.extra_heartbeat,
        )
        housekeeping.start()
    log.info(
        "scheduler %s: passes every %.1f s, sync every %.1f s%s",
        scheduler.name,
        settings.scheduler_interval_s,
        settings.scheduler_sync_s,
        "" if housekeeping is None else ", reconcile and prune on timers",
    )
    try:
        scheduler.run(burst=args.burst)
    finally:
        scheduler.stopping.set()
        if housekeeping is not None:
            housekeeping.join(HOUSEKEEPING_JOIN_S)
        log.info("scheduler %s stopped", scheduler.name)


if __name__ == "__main__":
    main()
