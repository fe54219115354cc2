"""`python -m worker --processes N`: N worker processes under one supervisor, which restarts them.

Each process is a whole `python -m worker` of its own (its own interpreter, Redis client and SQL
engine), named `<name>-<i>`; one that exits unasked is started again under a new name
(`<name>-<i>.<n>`: RQ keeps a dead worker's name registered for a while), after a pause that grows
from 1 s to 30 s while it keeps failing. A `--max-jobs` process that reached its count is replaced
at once: that is how a leaking task's memory is given back. SIGTERM or Ctrl-C is passed on to every
process, which finishes its job and exits (a second one stops them at once), and the supervisor
ends when they have. Killed outright, it takes them along (`worker.lifeline`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

log = logging.getLogger("worker.pool")

#: Set in each process's environment: the supervisor's pid, so the process dies with it.
SUPERVISOR_ENV = "LANES_WORKER_SUPERVISOR_PID"
POLL_S = 0.2
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
HEALTHY_AFTER_S = 60.0  # a process that lived this long starts its successor without a pause


@dataclass
class Slot:
    """One of the N places; the process in it now, and how its predecessors fared."""

    index: int
    process: subprocess.Popen[bytes] | None = None
    generation: int = 0
    started_at: float = 0.0
    backoff_s: float = 0.0
    restart_at: float = 0.0
    done: bool = False  # a --burst process that finished: not replaced


@dataclass
class Pool:
    """Runs `processes` copies of `python -m worker <args>` (args without --name/--processes)."""

    processes: int
    name: str
    args: list[str]
    burst: bool = False
    #: Called with a process's worker name when it ended unasked with an error (killed, crashed):
    #: `python -m worker` has it drop the worker's `lanes:alive:` key, so the reconciler's next
    #: sweep retries its job instead of waiting for the key to lapse.
    on_death: Callable[[str], None] | None = None
    slots: list[Slot] = field(default_factory=list)
    stopping: int = 0  # signals received

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self.slots = [Slot(index=i + 1) for i in range(self.processes)]
        for slot in self.slots:
            self._start(slot)
        while True:
            now = time.monotonic()
            for slot in self.slots:
                self._look_after(slot, now)
            if all(slot.process is None and (slot.done or self.stopping) for slot in self.slots):
                return 0
            time.sleep(POLL_S)

    def _look_after(self, slot: Slot, now: float) -> None:
        process = slot.process
        if process is None:
            if not slot.done and not self.stopping and now >= slot.restart_at:
                self._start(slot)
            return
        code = process.poll()
        if code is None:
            return
        slot.process = None
        name = self._name(slot)
        if self.stopping:
            log.info("worker %s stopped (exit code %s)", name, code)
            return
        if code == 0 and self.burst:
            slot.done = True
            return
        if code != 0 and self.on_death is not None:
            self.on_death(name)
        lived = now - slot.started_at
        if code == 0:  # --max-jobs reached: a fresh process takes its place
            slot.backoff_s = 0.0
        elif lived >= HEALTHY_AFTER_S or slot.backoff_s == 0.0:
            slot.backoff_s = FIRST_BACKOFF_S
        else:
            slot.backoff_s = min(MAX_BACKOFF_S, slot.backoff_s * 2)
        slot.restart_at = now + slot.backoff_s
        level = logging.INFO if code == 0 else logging.WARNING
        log.log(level, "worker %s exited (code %s); another starts in %.0f s", name, code, slot.backoff_s)

    def _start(self, slot: Slot) -> None:
        slot.generation += 1
        env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}
        command = [sys.executable, "-m", "worker", *self.args, "--name", self._name(slot), "--processes", "1"]
        slot.process = subprocess.Popen(command, env=env)
        slot.started_at = time.monotonic()
        log.info("worker %s started (pid %d)", self._name(slot), slot.process.pid)

    def _name(self, slot: Slot) -> str:
        base = f"{self.name}-{slot.index}"
        return base if slot.generation <= 1 else f"{base}.{slot.generation - 1}"

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping += 1
        log.info("supervisor: stopping %d worker process(es)", sum(s.process is not None for s in self.slots))
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is None:
                # Ctrl-C in a terminal reaches every process of the group at once; RQ ignores a
                # second signal within a second, so passing it on does not turn a warm stop cold.
                slot.process.send_signal(signal.SIGTERM)
