"""Local copies of objects that a job reads whole (an exported depth tower, a weights file).

    from c2p.storage.cache import local_copy
    path = local_copy("s3://ckpt/run/export/depth_tower.safetensors")
    # -> ~/.cache/c2p/objects/ckpt/run/export/depth_tower.safetensors

A copy lives under ``$C2P_CACHE_DIR`` (default ``~/.cache/c2p/objects``) at ``<bucket>/<key>``,
beside ``<name>.etag`` holding the object's ETag. Each call makes one HEAD: the copy is used while
the ETag and size still match, and downloaded again when the object changed (a new export under
the same address). The download goes through ``<name>.tmp`` + rename, so two jobs sharing the
cache never read half a file. A local path is returned unchanged. Loading the copy safely
(weights-only) is the caller's business, as for any local file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from c2p.storage import get_file, head, is_remote
from c2p.storage.s3 import S3Path, StorageError

__all__ = ["CACHE_ENV", "cache_root", "local_copy"]

log = logging.getLogger(__name__)

CACHE_ENV = "C2P_CACHE_DIR"


def cache_root() -> Path:
    """``$C2P_CACHE_DIR`` or ``~/.cache/c2p/objects``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "c2p" / "objects").expanduser()


def local_copy(path: str | os.PathLike, cache: str | os.PathLike | None = None) -> Path:
    """A local file holding the bytes of ``path``: the path itself when local, else the cached copy
    of the ``s3://`` object (downloaded when missing or when the object's ETag or size changed).

    Raises FileNotFoundError naming the address when the object does not exist, StorageError
    (naming the address, never the credentials) when the server cannot be read.
    """
    if not is_remote(path):
        return Path(path)
    url = str(path)
    where = S3Path.parse(url)
    if not where.key or where.key.endswith("/"):
        raise ValueError(f"{url!r}: expected the address of one object (s3://bucket/key), not a prefix")
    etag, size = head(url)
    local = Path(cache or cache_root()) / where.bucket / where.key
    stamp = local.with_name(local.name + ".etag")
    if local.is_file() and local.stat().st_size == size and stamp.is_file() and stamp.read_text() == etag:
        return local
    get_file(url, local)
    if local.stat().st_size != size:  # the object was replaced while it downloaded: do not stamp it
        raise StorageError(f"{url}: downloaded {local.stat().st_size} bytes, the object had {size}; it changed "
                           "during the download, try again")
    stamp.write_text(etag)
    log.info("downloaded %s (%d bytes) to %s", url, size, local)
    return local
