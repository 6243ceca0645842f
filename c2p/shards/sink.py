"""The shard task's writer thread: samples are encoded and written while the next object renders.

PNG/zlib encoding and file writes run outside the GIL and llvmpipe rasterises in threads of
its own, so encoding object *k* overlaps rendering object *k+1*. The order of the samples,
hence the shard's bytes, is the same threaded or not. Measured with
``tests/benchmarks/bench_shards.py`` (10k-triangle meshes, 2 cores): 1.07x objects/s on 1
worker, 1.02x on 2 (no idle core left to overlap on).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from typing import Any, Callable


class SampleSink:
    """Hands items to ``write_one`` in submission order: in the calling thread, or in one thread
    of its own while the caller loads and renders the next objects.

    Unthreaded, up to ``depth`` items wait (requested image features arrive meanwhile; 0: each
    is written at once); threaded, a queue of ``depth`` items bounds the objects held in
    memory. An exception of the thread is raised in the caller at the next :meth:`put` or at
    :meth:`close`.
    """

    def __init__(self, write_one: Callable[[Any], None], threaded: bool, depth: int):
        self._write_one = write_one
        self._depth = depth
        self._pending: deque = deque()
        self._error: BaseException | None = None
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        if threaded:
            self._queue = queue.Queue(maxsize=max(1, depth))
            self._thread = threading.Thread(target=self._run, name="shard-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        assert self._queue is not None
        while (item := self._queue.get()) is not None:
            if self._error is None:  # after a failure, drain without writing so put() never blocks
                try:
                    self._write_one(item)
                except BaseException as e:
                    self._error = e

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, item: Any) -> None:
        """Queue ``item``; in line, write the oldest items beyond ``depth`` now."""
        if self._queue is None:
            self._pending.append(item)
            while len(self._pending) > self._depth:
                self._write_one(self._pending.popleft())
            return
        self._raise()
        self._queue.put(item)

    def close(self) -> None:
        """Write everything still queued; raises the thread's exception, if any."""
        if self._queue is None:
            while self._pending:
                self._write_one(self._pending.popleft())
            return
        self.stop()
        self._raise()

    def stop(self) -> None:
        """End the thread after the queued items (no-op unthreaded or when already stopped)."""
        if self._thread is not None and self._thread.is_alive():
            assert self._queue is not None
            self._queue.put(None)
            self._thread.join()
