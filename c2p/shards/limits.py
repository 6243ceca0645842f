"""Limits that keep one pathological object from taking a render worker down.

A mesh that never finishes loading, or one so large that loading it exhausts the worker's
memory, would otherwise hang or kill the worker; Ray retries the shard task, the same object
does the same again, and after ``job.max_retries`` the whole shard fails. Instead:

- ``job.max_file_mb``: a source file larger than this is refused before it is opened;
- ``job.max_faces``: a mesh with more triangles than this is refused once loaded, before it is
  sampled or rendered;
- ``job.object_timeout_s``: an object that has not been loaded, sampled and rendered within
  this many seconds is abandoned (Objaverse-XL's renderer allows 300 s).

Each becomes an :class:`ObjectLimit` (a one-line error record with the reason), and the shard
goes on with its other objects. None of them changes what a finished object's bytes are, so
they are not render settings: a re-run with other limits keeps finished shards.

The time limit uses ``SIGALRM``, which interrupts Python code and blocking system calls
(``open`` on a stalled file system, ``read``) but not a long computation inside one C call;
signals reach only the main thread, so elsewhere the limit is not applied (Ray runs a task's
function in its worker's main thread).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Any, Iterator

__all__ = ["ObjectLimit", "object_deadline", "check_file_size", "check_faces"]


class ObjectLimit(BaseException):
    """An object over a limit. A BaseException, so that a reader's ``except Exception`` around
    a parser cannot turn the timeout into a parse error and carry on; ``error`` is
    ``Timeout`` or ``TooLarge``, ``reason`` says which limit and by how much."""

    def __init__(self, error: str, reason: str):
        self.error, self.reason = error, reason
        super().__init__(f"{error}: {reason}")


@contextlib.contextmanager
def object_deadline(seconds: float, uid: str) -> Iterator[None]:
    """Raise :class:`ObjectLimit` in the body once ``seconds`` (wall time) have passed; 0 = no limit."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum: int, frame: Any) -> None:
        raise ObjectLimit("Timeout", f"object {uid} not loaded, sampled and rendered within {seconds:g} s (job.object_timeout_s)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_file_size(source: str | Path, max_mb: float) -> None:
    """Refuse a source file over ``max_mb`` MiB (0 = no limit); sources that are not files pass."""
    path = Path(source)
    if max_mb <= 0 or not path.is_file():
        return
    size = path.stat().st_size
    if size > max_mb * 2**20:
        raise ObjectLimit("TooLarge", f"{path} is {size / 2**20:.1f} MiB; expected at most {max_mb:g} MiB (job.max_file_mb)")


def check_faces(mesh: Any, max_faces: int) -> None:
    """Refuse a trimesh Trimesh/Scene with more than ``max_faces`` triangles in all (0 = no limit)."""
    if max_faces <= 0 or mesh is None:
        return
    from c2p.geometry import scene_pieces

    faces = sum(len(getattr(geom, "faces", ())) for _, geom, _ in scene_pieces(mesh))
    if faces > max_faces:
        raise ObjectLimit("TooLarge", f"mesh has {faces} triangles; expected at most {max_faces} (job.max_faces)")
