"""Crash-safe file writes: a file is either the old one or the new one, never torn.

Every file that a later run trusts (shard indexes, checkpoint markers, ``config.yaml``,
exported weights, the metrics log after truncation) goes through :func:`atomic_write_bytes`;
tar shards follow the same protocol in :class:`c2p.schema.ShardWriter` (``<name>.tmp``,
fsync, rename). Readers ignore ``*.tmp`` files, and a re-run overwrites them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

__all__ = ["TMP_SUFFIX", "atomic_write_bytes", "atomic_write_chunks", "fsync_dir"]

TMP_SUFFIX = ".tmp"


def fsync_dir(path: str | Path) -> None:
    """fsync a folder: a rename inside it is durable only once the folder itself is synced."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, mode: int = 0o666) -> None:
    """Write ``data`` to ``path`` through ``path.tmp`` + fsync + rename + fsync of the folder:
    after a crash the file is either the old or the new one, never torn. ``mode``: permissions
    of a new file (less the umask), e.g. 0o600 for a secret."""
    atomic_write_chunks(path, (data,), mode)


def atomic_write_chunks(path: str | Path, chunks: Iterable[bytes], mode: int = 0o666) -> None:
    """:func:`atomic_write_bytes` of the concatenated ``chunks``, written as they come (a file
    of hundreds of MB never has to exist in memory as one bytes object)."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as f:
        for data in chunks:
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
