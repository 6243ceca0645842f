"""One writer per directory: a lease on a run directory or a render output.

Two jobs writing one run directory move ``latest`` backwards and prune each other's tags; two
render drivers on one output delete each other's staging. So the job that writes a directory
holds ``<dir>/lease.json`` for as long as it writes:

| field | content |
|---|---|
| ``owner`` | the job: ``slurm-<SLURM_JOB_ID>`` (``slurm-<array id>_<task id>`` in an array), else a uuid |
| ``host``, ``pid`` | the process holding it |
| ``since`` | when it was taken (Unix seconds) |
| ``token`` | this holder's uuid (a lease taken over by a requeued job gets a new one) |

The heartbeat is the file's mtime, refreshed every ``refresh_s`` by a daemon thread
(``os.utime``: the record is never rewritten in place).

Taking it is atomic: the record is written to a private file which is hard-linked to
``lease.json``; the link fails when the lease exists (create-if-absent that also holds on NFS,
and a reader never sees half a record). An existing lease is

- **live** (the owner's pid runs on this host, or it is on another host with a fresh heartbeat):
  refused with :class:`LeaseHeld` naming the owner (a :class:`~c2p.cluster.errors.LaunchError`:
  commands exit 2);
- **the same job** (same ``owner``: a requeued SLURM job of the run) whose process is no
  longer running here: taken over;
- **stale** (owner pid gone on this host, or heartbeat older than ``stale_after_s``): taken over
  with a warning naming the former owner.

Two contenders for a stale lease are serialised by a second create-if-absent file
(``lease.json.takeover``; one left by a contender that died is ignored after a minute).
Object-store outputs (``s3://``) get no lease: there is no atomic create-if-absent there.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from c2p.cluster.errors import LaunchError

__all__ = ["LEASE_NAME", "REFRESH_S", "STALE_AFTER_S", "LeaseHeld", "LeaseRecord", "Lease", "job_identity",
           "read_lease", "check_free"]

log = logging.getLogger(__name__)

LEASE_NAME = "lease.json"
REFRESH_S = 30.0
"""seconds between heartbeats"""
STALE_AFTER_S = 600.0
"""a heartbeat older than this is a dead owner (its host crashed, or it was SIGKILLed elsewhere)"""
_TAKEOVER_STALE_S = 60.0


class LeaseHeld(LaunchError):
    """The directory is leased by another live job; the message names it."""


@dataclass
class LeaseRecord:
    """The content of ``lease.json`` (see the module docstring); ``heartbeat`` is the file's mtime."""

    owner: str
    host: str
    pid: int
    since: float
    token: str
    heartbeat: float = 0.0

    def describe(self, now: float) -> str:
        job = f"job {self.owner.removeprefix('slurm-')}" if self.owner.startswith("slurm-") else f"owner {self.owner}"
        return (f"{job} (host {self.host}, pid {self.pid}, since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.since))}, "
                f"heartbeat {now - self.heartbeat:.0f}s ago)")


def job_identity() -> str:
    """This process's job as a lease owner: ``slurm-<id>`` (array: ``slurm-<array id>_<task id>``), "" outside SLURM."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"slurm-{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return f"slurm-{env['SLURM_JOB_ID']}" if env.get("SLURM_JOB_ID") else ""


def read_lease(directory: str | Path) -> LeaseRecord | None:
    """The lease of ``directory``, or None when there is none (or it vanished while being read)."""
    path = Path(directory) / LEASE_NAME
    try:
        heartbeat = path.stat().st_mtime
        fields = json.loads(path.read_text())
        return LeaseRecord(**{**fields, "heartbeat": heartbeat})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as e:  # not ours, or damaged: refuse rather than guess
        raise LeaseHeld(f"{path}: unreadable lease ({type(e).__name__}: {e}); expected a c2p lease record: "
                        "remove it by hand if no job writes this directory") from e


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _verdict(rec: LeaseRecord, me: str, now: float, stale_after_s: float) -> tuple[str, str]:
    """("live" | "same job" | "stale", why) of ``rec`` as seen by job ``me`` on this host."""
    here = rec.host == socket.gethostname()
    running_here = here and _pid_alive(rec.pid)
    if running_here:
        return "live", "its process runs on this host"
    if me and rec.owner == me:
        return "same job", "the same job, restarted"
    if here:
        return "stale", f"its process {rec.pid} is gone from this host"
    if now - rec.heartbeat > stale_after_s:
        return "stale", f"its heartbeat is {now - rec.heartbeat:.0f}s old (> {stale_after_s:.0f}s)"
    return "live", "its heartbeat is fresh"


def check_free(directory: str | Path, what: str, *, stale_after_s: float = STALE_AFTER_S) -> None:
    """Refuse (:class:`LeaseHeld`) when another live job holds ``directory``'s lease; writes nothing.

    For launchers, before they write or submit anything. ``what`` names the directory's role
    in the message (``"run directory"``, ``"render output"``).
    """
    rec = read_lease(directory)
    if rec is not None and _verdict(rec, job_identity(), time.time(), stale_after_s)[0] == "live":
        raise _held(directory, what, rec)


def _held(directory: str | Path, what: str, rec: LeaseRecord) -> LeaseHeld:
    stop = f"scancel {rec.owner.removeprefix('slurm-')}" if rec.owner.startswith("slurm-") else f"kill {rec.pid} on {rec.host}"
    return LeaseHeld(f"{what} {directory} is in use by {rec.describe(time.time())}; expected a directory no other job "
                     f"writes: wait for that job to end or stop it ({stop}). A lease whose owner is gone is taken over "
                     f"by the next run ({Path(directory) / LEASE_NAME})")


class Lease:
    """This process's lease on ``directory`` (see the module docstring). ``with Lease(d, "run directory"):``
    or :meth:`acquire` / :meth:`release`. ``what`` names the directory's role in messages."""

    def __init__(self, directory: str | Path, what: str, *, stale_after_s: float = STALE_AFTER_S,
                 refresh_s: float = REFRESH_S):
        self.directory, self.what = Path(directory), what
        self.path = self.directory / LEASE_NAME
        self.stale_after_s, self.refresh_s = stale_after_s, refresh_s
        self.record = LeaseRecord(job_identity() or f"uuid-{uuid.uuid4().hex}", socket.gethostname(), os.getpid(),
                                  time.time(), uuid.uuid4().hex)
        self._created_dir = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> "Lease":
        """Take the lease (creating ``directory``), or raise :class:`LeaseHeld` naming its live owner."""
        self._created_dir = not self.directory.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._link():
                break
            rec = read_lease(self.directory)
            if rec is None:
                continue  # released between our link and our read
            verdict, why = _verdict(rec, self.record.owner if not self.record.owner.startswith("uuid-") else "",
                                    time.time(), self.stale_after_s)
            if verdict == "live":
                self._undo_mkdir()
                raise _held(self.directory, self.what, rec)
            if self._take_over(rec):
                (log.warning if verdict == "stale" else log.info)(
                    "%s %s: taking over the lease of %s: %s", self.what, self.directory, rec.describe(time.time()), why)
                break
        else:
            raise LeaseHeld(f"{self.what} {self.directory}: the lease changed hands 3 times while being taken; "
                            "expected one writer: is another job starting on it right now?")
        self._thread = threading.Thread(target=self._refresh, name="c2p-lease", daemon=True)
        self._thread.start()
        atexit.register(self.release)  # a process that ends on an exception frees the directory too
        return self

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still ours (and the directory, if this
        lease created it and nothing else was written there)."""
        if os.getpid() != self.record.pid:  # a forked child (a DataLoader worker) never releases its parent's lease
            return
        atexit.unregister(self.release)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        try:
            rec = read_lease(self.directory)
        except LeaseHeld:
            rec = None
        if rec is not None and rec.token == self.record.token:
            self.path.unlink(missing_ok=True)
        self._undo_mkdir()

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _undo_mkdir(self) -> None:
        if self._created_dir:
            try:
                self.directory.rmdir()  # only when empty: a refused or failed start leaves nothing behind
            except OSError:
                pass

    def _link(self) -> bool:
        """Create ``lease.json`` holding our record if it does not exist (atomic); False if it does."""
        private = self.directory / f".{LEASE_NAME}.{self.record.token}.new"
        private.write_text(json.dumps({k: v for k, v in asdict(self.record).items() if k != "heartbeat"}))
        try:
            os.link(private, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            private.unlink(missing_ok=True)

    def _take_over(self, seen: LeaseRecord) -> bool:
        """Replace the lease ``seen`` (judged not live) by ours; False if it changed meanwhile."""
        guard = self.path.with_name(LEASE_NAME + ".takeover")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - guard.stat().st_mtime > _TAKEOVER_STALE_S:  # a contender died mid-way
                    guard.unlink(missing_ok=True)
                    return False
            except FileNotFoundError:
                return False
            raise LeaseHeld(f"{self.what} {self.directory}: another process is taking over its stale lease right now "
                            f"({guard}); expected one writer") from None
        try:
            os.close(fd)
            again = read_lease(self.directory)
            if again is not None and again.token != seen.token:
                return False
            self.path.unlink(missing_ok=True)
            return self._link()
        finally:
            guard.unlink(missing_ok=True)

    def _refresh(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                rec = read_lease(self.directory)
                if rec is None or rec.token != self.record.token:
                    log.error("%s %s: this job's lease was taken by %s; two jobs may now write here", self.what,
                              self.directory, rec.describe(time.time()) if rec else "nobody (it was deleted)")
                    return
                os.utime(self.path)
            except (OSError, LeaseHeld) as e:  # a flaky file system must not end the job; a later beat may succeed
                log.warning("%s %s: lease heartbeat failed: %s", self.what, self.directory, e)
