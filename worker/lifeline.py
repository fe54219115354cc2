"""A worker's child processes die with it: no work-horse runs on beside its job's retry.

When a worker's parent process is killed outright (SIGKILL, the OOM killer), its work-horse and
RQ's scheduler process would otherwise live on as orphans: the horse still running a job that the
platform is about to retry elsewhere, the scheduler holding its locks for ever. Each child asks the
kernel to SIGKILL it when its parent dies (Linux's `PR_SET_PDEATHSIG`); elsewhere a daemon thread
watches for the parent to change.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
WATCH_INTERVAL_S = 0.5  # where there is no prctl, how often a child looks for its parent


def die_with_parent(parent_pid: int) -> None:
    """Make this process end when `parent_pid`, its parent, does; end now if it already has."""
    if not _kernel_will_kill_us():
        threading.Thread(target=_watch, args=(parent_pid,), name="lanes-lifeline", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


def _kernel_will_kill_us() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        log.warning("prctl(PR_SET_PDEATHSIG) is not available; watching the parent instead")
        return False


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(WATCH_INTERVAL_S)
    os.kill(os.getpid(), signal.SIGKILL)
