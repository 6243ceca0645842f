"""A size-bounded local cache of shards read from object storage (``data.cache_dir``).

The first epoch streams each tar from the bucket as usual and writes the bytes it reads to a
``<cache>/<bucket>/<key>.<pid>.<unique>.tmp`` of its own on the way (no second download); when
the tar has been read to its end, the copy is renamed into place beside ``<key>.etag``. A later
read of the same address makes one HEAD: while the object's ETag still matches, the tar is read
from local disk. A read that fails or stops early leaves no copy, so a damaged or partial tar is
never served from the cache. After each new copy, the least recently read copies are deleted
until the cache holds at most ``max_bytes``. Ranks and loader workers of a node can share one
cache: copies appear by rename, and deleting a copy another process still reads is harmless on
POSIX.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from pathlib import Path

from c2p.storage import head
from c2p.storage.s3 import S3Path, StorageError, open_stream

__all__ = ["ShardCache"]

log = logging.getLogger(__name__)

ETAG_SUFFIX = ".etag"


class ShardCache:
    """``open(url)``: a binary reader of the ``s3://`` tar ``url``, from the cache when it holds
    the object's current bytes. ``hits``/``misses``: opens served from disk / from the bucket (this process)."""

    def __init__(self, root: str | os.PathLike, max_bytes: int, on_retry=None):
        self.root, self.max_bytes, self.on_retry = Path(root).expanduser(), int(max_bytes), on_retry
        self.hits = self.misses = 0

    def path(self, url: str) -> Path:
        where = S3Path.parse(url)
        return self.root / where.bucket / where.key

    def open(self, url: str):
        local = self.path(url)
        stamp = local.with_name(local.name + ETAG_SUFFIX)
        if local.is_file() and stamp.is_file() and self._current(url, stamp.read_text()):
            os.utime(local)  # read now: the least recently read copies go first
            self.hits += 1
            return open(local, "rb")
        self.misses += 1
        return _Tee(open_stream(S3Path.parse(url), on_retry=self.on_retry, request_now=True), local, self)

    def _current(self, url: str, etag: str) -> bool:
        """The cached copy still has the object's bytes (one HEAD). A store that does not answer
        keeps the copy in use: shards are immutable once written, and training goes on."""
        try:
            return head(url)[0] == etag
        except FileNotFoundError:
            raise FileNotFoundError(f"{url} does not exist (a cached copy does: the object was deleted)") from None
        except StorageError as exn:
            log.warning("%s; reading the cached copy", exn)
            return True

    def _commit(self, tmp: Path, local: Path, etag: str) -> None:
        local.with_name(local.name + ETAG_SUFFIX).write_text(etag)
        os.replace(tmp, local)
        self._evict(keep=local)

    def _evict(self, keep: Path) -> None:
        copies = [p for p in self.root.rglob("*") if p.is_file() and not p.name.endswith((ETAG_SUFFIX, ".tmp"))]
        total = sum(p.stat().st_size for p in copies)
        for p in sorted(copies, key=lambda p: p.stat().st_mtime):
            if total <= self.max_bytes:
                break
            if p == keep:
                continue
            total -= p.stat().st_size
            p.unlink(missing_ok=True)
            p.with_name(p.name + ETAG_SUFFIX).unlink(missing_ok=True)


class _Tee:
    """An object's stream (:func:`~c2p.storage.s3.open_stream`) whose bytes are also written to the
    cache; :meth:`finish` (called once the reader reached the tar's end) reads what is left and
    commits the copy; :meth:`close` without it drops the partial copy."""

    def __init__(self, src: io.BufferedReader, local: Path, cache: ShardCache):
        self.src, self.local, self.cache = src, local, cache
        local.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own: the loader opens the next tar while it reads this one, and a
        # resampled stream may draw the same tar twice in a row.
        fd, tmp = tempfile.mkstemp(dir=local.parent, prefix=f"{local.name}.{os.getpid()}.", suffix=".tmp")
        self.tmp, self.out = Path(tmp), os.fdopen(fd, "wb")
        self.done = False

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n)
        self.out.write(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence != 1 or offset < 0:
            raise ValueError("a cached stream only moves forward (relative seeks)")
        self.read(offset)  # every byte goes to the copy
        return self.src.tell()

    def tell(self) -> int:
        return self.src.tell()

    def finish(self) -> None:
        while self.read(1 << 20):
            pass
        self.out.close()
        size, etag = self.src.raw.size, self.src.raw.etag
        if size is not None and self.tmp.stat().st_size == size:
            self.cache._commit(self.tmp, self.local, etag)
            self.done = True

    def close(self) -> None:
        self.src.close()
        if not self.out.closed:
            self.out.close()
        if not self.done:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "_Tee":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
