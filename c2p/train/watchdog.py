"""Progress watchdog: a rank that stops finishing optimizer steps ends its process, loudly.

Why: every step holds collectives, so one rank that stops (SIGSTOP, a hung file system read, a
wedged GPU) leaves every other rank blocked inside a C++ collective with nothing printed. The
collective's own timeout (``train.collective_timeout_s``) ends that eventually, but names
neither the rank nor the step. So each rank runs one :class:`Watchdog` thread:

- the loop calls :meth:`Watchdog.beat` after every optimizer step (two numbers in memory, no I/O);
- every ``poll_s`` the thread writes ``<run>/heartbeat/rank_XXXXX.json`` (rank, host, pid,
  last step, when it finished, when the file was written): where each rank is, for peers and
  for an operator. A file that is no longer rewritten is a process that is frozen, dead or cut off;
- when no step finished for ``timeout_s`` it logs an error naming this rank, its last step and
  for how long, and the peer that stopped (:func:`stalled_peers`), flushes the logs and ends
  the process with :data:`EXIT_STALLED`. ``os._exit``, because the main thread is blocked in a
  collective that no exception can interrupt. Before that, ``on_stall`` runs (pre-training:
  ask SLURM to requeue the job, :func:`c2p.cluster.slurm.requeue_this_job`, within
  ``train.watchdog_requeues``: a failed job is not requeued by SLURM, a lost node is). The launcher
  sees a failed rank and ends the job (SLURM: ``srun --kill-on-bad-exit``; local jobs:
  :func:`c2p.cluster.submit.wait`); requeued, it resumes from ``latest``.

Sizing: the watchdog bounds one optimizer step, and the steps that save a checkpoint (every
``checkpoint.every``) are the longest. A step that takes more than half of ``timeout_s`` is
logged as a warning once, naming the step, so a bound too tight for the checkpoint saves
shows up in the log long before it ends a healthy run.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

__all__ = ["EXIT_STALLED", "HEARTBEAT_DIR", "Heartbeat", "Watchdog", "read_heartbeats", "stalled_peers"]

log = logging.getLogger("c2p.train")

EXIT_STALLED = 75
"""Exit status of a rank whose watchdog fired (sysexits' EX_TEMPFAIL: a failure worth a retry)."""

HEARTBEAT_DIR = "heartbeat"


@dataclass
class Heartbeat:
    """One rank's ``heartbeat/rank_XXXXX.json``. Times are Unix seconds of the writer's clock."""

    rank: int
    host: str
    pid: int
    step: int
    """optimizer steps finished"""
    progress_time: float
    """when ``step`` finished (or the watchdog started, before the first step)"""
    written_time: float
    """when this file was last written: a stale value means the process stopped running"""


def _heartbeat_path(directory: Path, rank: int) -> Path:
    return directory / f"rank_{rank:05d}.json"


def read_heartbeats(directory: Path, world_size: int) -> dict[int, Heartbeat]:
    """The readable heartbeat files of ranks ``0..world_size-1`` in ``directory`` (others, from a
    former run with more ranks, and half-written ones are left out)."""
    beats = {}
    for rank in range(world_size):
        try:
            beats[rank] = Heartbeat(**json.loads(_heartbeat_path(directory, rank).read_text()))
        except (OSError, ValueError, TypeError):
            continue
    return beats


def stalled_peers(beats: dict[int, Heartbeat], me: int, now: float, poll_s: float) -> str:
    """Which ranks stopped, in words, from the peers' heartbeats.

    A rank whose file was not rewritten for more than ``3 * poll_s`` is frozen, dead or cut
    off (its watchdog thread stopped too); otherwise the ranks whose last step is behind the
    others' are the ones the others wait for. "" when nothing tells them apart.
    """
    others = {r: b for r, b in beats.items() if r != me}
    frozen = [b for b in others.values() if now - b.written_time > 3 * poll_s]
    if frozen:
        # b.step is the step of its last heartbeat write, up to poll_s of steps behind where it stopped
        return "; ".join(f"rank {b.rank} (pid {b.pid} on {b.host}) stopped running {now - b.written_time:.0f}s ago "
                         f"(frozen, dead or unreachable; last reported step {b.step})" for b in sorted(frozen, key=lambda b: b.rank))
    if not others:
        return ""
    low = min(b.step for b in beats.values())
    behind = [b for b in others.values() if b.step == low and any(o.step > low for o in beats.values())]
    return "; ".join(f"rank {b.rank} (pid {b.pid} on {b.host}) is behind at step {b.step}" for b in behind)


class Watchdog:
    """One rank's progress watchdog (see the module docstring). A context manager:
    ``with Watchdog(...) as dog: ... dog.beat(step)``; leaving it stops the thread and removes
    this rank's heartbeat file (a file left behind is a rank that did not end cleanly).

    ``timeout_s``: seconds without a finished step before the process ends (0: no watchdog,
    the heartbeat file is still written); ``poll_s``: how often the thread wakes and rewrites
    the file (default: ``timeout_s / 10`` within 1..30 s); ``on_stall``: called once the
    watchdog fired, before the process ends; what it returns (what it did, in words) is logged.
    """

    def __init__(self, run_dir: Path, rank: int, world_size: int, timeout_s: float, *, step: int = 0,
                 poll_s: float | None = None, on_stall: Callable[[], str] | None = None):
        self.directory = Path(run_dir) / HEARTBEAT_DIR
        self.rank, self.world_size, self.timeout_s = rank, world_size, timeout_s
        self.poll_s = poll_s or min(30.0, max(1.0, timeout_s / 10 if timeout_s else 30.0))
        self.step, self.progress_time = step, time.time()
        self._warned = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"c2p-watchdog-rank{rank}", daemon=True)
        self._host, self._pid = socket.gethostname(), os.getpid()
        self.on_stall = on_stall

    def __enter__(self) -> "Watchdog":
        self.directory.mkdir(parents=True, exist_ok=True)
        self.progress_time = time.time()
        self._write()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5 * self.poll_s)
        _heartbeat_path(self.directory, self.rank).unlink(missing_ok=True)

    def beat(self, step: int) -> None:
        """Step ``step`` finished on this rank (called by the loop; no I/O)."""
        now = time.time()
        took = now - self.progress_time
        if self.timeout_s and not self._warned and took > self.timeout_s / 2:
            self._warned = True  # once: the checkpoint steps repeat, and so would the line
            log.warning("rank %d: step %d took %.0fs, more than half of train.watchdog_s = %.0fs; a slower step "
                        "(a checkpoint save) would end the run: raise train.watchdog_s", self.rank, step, took,
                        self.timeout_s)
        self.step, self.progress_time = step, now

    def _write(self) -> None:
        beat = Heartbeat(self.rank, self._host, self._pid, self.step, self.progress_time, time.time())
        path = _heartbeat_path(self.directory, self.rank)
        tmp = path.with_name(f".{path.name}.{self._pid}.tmp")
        try:
            tmp.write_text(json.dumps(asdict(beat)))
            os.replace(tmp, path)  # readers never see half a file
        except OSError as e:  # a full or flaky disk must not end a healthy run: the watchdog itself still works
            log.warning("rank %d: cannot write heartbeat %s: %s", self.rank, path, e)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._write()
            idle = time.time() - self.progress_time
            if self.timeout_s and idle > self.timeout_s:
                self._fire(idle)

    def _fire(self, idle: float) -> None:
        now = time.time()
        peers = stalled_peers(read_heartbeats(self.directory, self.world_size), self.rank, now, self.poll_s)
        log.error("watchdog: rank %d finished no optimizer step for %.0fs (train.watchdog_s = %.0f) after step %d%s; "
                  "ending this rank with exit status %d",
                  self.rank, idle, self.timeout_s, self.step,
                  f"; {peers}" if peers else "; no peer's heartbeat tells which rank stopped (see heartbeat/)",
                  EXIT_STALLED)
        if self.on_stall is not None:
            try:
                log.error("watchdog: rank %d: %s", self.rank, self.on_stall())
            except Exception as e:  # noqa: BLE001 -- the process ends either way
                log.error("watchdog: rank %d: on_stall failed: %s: %s", self.rank, type(e).__name__, e)
        for h in log.handlers:
            h.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_STALLED)
