"""Where shards live: a local path or an ``s3://bucket/prefix`` address, behind one set of calls.

    from c2p import storage
    storage.is_remote("s3://data/shapenet")              # True
    storage.read_bytes("s3://data/shapenet/index.json")  # one GET
    storage.list_names("s3://data/shapenet")             # names directly under the prefix, one LIST
    with storage.open_binary("s3://data/shapenet/shard-000000.tar") as f: ...  # a resuming stream
    storage.put_file("step_00000500/c2p_commit.json", "s3://ckpt/run/step_00000500/c2p_commit.json")
    storage.get_file("s3://ckpt/run/export/depth_tower.safetensors", "/tmp/depth_tower.safetensors")

Local paths go to the filesystem unchanged. S3 addresses go to :mod:`c2p.storage.s3`
(boto3; endpoint, region and credentials from the standard AWS environment and config files).
:func:`take_retries` hands the retries made by this process's streams since the last call to
the loader's counters.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import BinaryIO

from c2p.storage.s3 import SCHEME, S3Path, StorageError, client, describe, is_missing, open_stream

__all__ = ["SCHEME", "S3Path", "StorageError", "is_remote", "check_url", "join", "open_binary", "read_bytes", "list_names", "list_tree", "head", "exists",
           "put_file", "put_bytes", "get_file", "delete", "take_retries"]

_retries = 0
_retries_lock = threading.Lock()


def count_retry() -> None:
    """Count one read retry (streams call it; :func:`take_retries` hands the count on)."""
    global _retries
    with _retries_lock:
        _retries += 1


def take_retries() -> int:
    """Read retries of this process's streams since the last call."""
    global _retries
    with _retries_lock:
        n, _retries = _retries, 0
    return n


def is_remote(path: str | os.PathLike) -> bool:
    """True for an ``s3://`` address."""
    return str(path).startswith(SCHEME)


# Characters of bucket names, beginning and ending with a letter or digit. Lenient on case and '_'
# (legacy buckets and some S3-compatible stores allow them); the store decides the rest.
_BUCKET = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


def check_url(url: str, expect: str = "prefix") -> S3Path:
    """``url`` parsed, or ValueError saying how it is malformed and what was expected. No request
    is made: this is the shape check config validation may run offline.

    ``expect``: ``"prefix"`` (``s3://bucket`` or ``s3://bucket/prefix``, a trailing '/' allowed) or
    ``"object"`` (``s3://bucket/key``, a key that does not end with '/'). Refused: another scheme,
    a bucket name with other characters, an empty path segment (``s3://bucket//key``).
    """
    want = "s3://bucket/key (one object)" if expect == "object" else "s3://bucket or s3://bucket/prefix"
    if not is_remote(url):
        raise ValueError(f"{url!r} is not an s3:// address; expected {want}")
    bucket, _, key = url[len(SCHEME):].partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise ValueError(f"{url!r}: {bucket!r} is not a bucket name (letters, digits, '.', '-', '_'); expected {want}")
    if expect == "object" and (not key or key.endswith("/")):
        raise ValueError(f"{url!r} is a prefix, not an object; expected {want}")
    body = key.rstrip("/") if expect == "prefix" else key
    if body.startswith("/") or "//" in body:
        raise ValueError(f"{url!r}: the key {key!r} has an empty path segment ('//'); expected {want}")
    return S3Path(bucket, key)


def join(base: str | os.PathLike, name: str) -> str:
    """``base/name`` for a local folder or an ``s3://`` prefix."""
    if is_remote(base):
        return str(S3Path.parse(str(base)).child(name))
    return str(Path(base) / name)


def open_binary(path: str | os.PathLike, request_now: bool = False) -> BinaryIO:
    """A binary reader of ``path``: the file, or an object's buffered, resuming stream
    (:func:`~c2p.storage.s3.open_stream`). ``request_now``: send the object's GET at once, from a
    background thread, so that opening the next object early overlaps its time to first byte
    with other work (errors still surface at the first read)."""
    if is_remote(path):
        return open_stream(S3Path.parse(str(path)), on_retry=count_retry, request_now=request_now)  # type: ignore[return-value]
    return open(path, "rb")


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole object or file; FileNotFoundError naming ``path`` when it does not exist."""
    if not is_remote(path):
        return Path(path).read_bytes()
    with open_binary(path) as f:
        return f.read()


def list_names(prefix: str | os.PathLike) -> dict[str, int]:
    """``{name: size in bytes}`` of the objects (files) directly under a prefix (folder)."""
    if not is_remote(prefix):
        root = Path(prefix)
        return {p.name: p.stat().st_size for p in root.iterdir() if p.is_file()} if root.is_dir() else {}
    where = S3Path.parse(str(prefix))
    key = where.key.rstrip("/") + "/" if where.key else ""
    names: dict[str, int] = {}
    try:
        for page in client().get_paginator("list_objects_v2").paginate(Bucket=where.bucket, Prefix=key, Delimiter="/"):
            for obj in page.get("Contents", []):
                names[obj["Key"][len(key):]] = int(obj["Size"])
    except Exception as exn:
        if is_missing(exn):
            return {}
        raise StorageError(f"{prefix}: listing failed ({describe(exn)})") from exn
    return names


def head(url: str) -> tuple[str, int]:
    """``(ETag, size in bytes)`` of the object ``url`` (one HEAD). FileNotFoundError naming ``url``
    when there is no such object; StorageError (the address and the server's code) otherwise."""
    where = S3Path.parse(url)
    try:
        resp = client().head_object(Bucket=where.bucket, Key=where.key)
    except Exception as exn:
        if is_missing(exn):
            raise FileNotFoundError(f"{url} does not exist") from None
        raise StorageError(f"{url}: HEAD failed ({describe(exn)})") from exn
    return str(resp.get("ETag", "")).strip('"'), int(resp["ContentLength"])


def exists(path: str | os.PathLike) -> bool:
    """Whether the file or object exists (one HEAD for an address)."""
    if not is_remote(path):
        return Path(path).exists()
    try:
        head(str(path))
        return True
    except FileNotFoundError:
        return False


def list_tree(prefix: str) -> dict[str, int]:
    """``{relative key: size}`` of every object under the ``s3://`` prefix (recursively)."""
    where = S3Path.parse(prefix)
    key = where.key.rstrip("/") + "/" if where.key else ""
    names: dict[str, int] = {}
    try:
        for page in client().get_paginator("list_objects_v2").paginate(Bucket=where.bucket, Prefix=key):
            names.update({obj["Key"][len(key):]: int(obj["Size"]) for obj in page.get("Contents", [])})
    except Exception as exn:
        if is_missing(exn):
            return {}
        raise StorageError(f"{prefix}: listing failed ({describe(exn)})") from exn
    return names


def put_file(local: str | os.PathLike, url: str) -> None:
    """Upload the file ``local`` as the object ``url``. The object appears only once complete:
    one PUT, or a multipart upload (large files) whose completion is its last request; a failed
    upload leaves no object (boto3 aborts the multipart upload). Retries are boto3's."""
    where = S3Path.parse(url)
    try:
        client().upload_file(str(local), where.bucket, where.key)
    except Exception as exn:
        raise StorageError(f"{url}: upload of {local} failed ({describe(exn)})") from exn


def put_bytes(data: bytes, url: str) -> None:
    """``data`` as the object ``url`` (one PUT: the object is the old or the new one, never torn)."""
    where = S3Path.parse(url)
    try:
        client().put_object(Bucket=where.bucket, Key=where.key, Body=data)
    except Exception as exn:
        raise StorageError(f"{url}: upload failed ({describe(exn)})") from exn


def get_file(url: str, local: str | os.PathLike) -> int:
    """Download the object ``url`` to the file ``local`` through ``local.tmp`` + rename (a
    concurrent reader sees the old file or the whole new one); returns its size in bytes.
    FileNotFoundError naming ``url`` when there is no such object."""
    where, local = S3Path.parse(url), Path(local)
    tmp = local.with_name(local.name + ".tmp")
    local.parent.mkdir(parents=True, exist_ok=True)
    try:
        client().download_file(where.bucket, where.key, str(tmp))
    except Exception as exn:
        tmp.unlink(missing_ok=True)
        if is_missing(exn):
            raise FileNotFoundError(f"{url} does not exist") from None
        raise StorageError(f"{url}: download to {local} failed ({describe(exn)})") from exn
    os.replace(tmp, local)
    return local.stat().st_size


def delete(urls: list[str]) -> None:
    """Delete the objects ``urls`` (missing ones are fine)."""
    for url in urls:
        where = S3Path.parse(url)
        try:
            client().delete_object(Bucket=where.bucket, Key=where.key)
        except Exception as exn:
            if not is_missing(exn):
                raise StorageError(f"{url}: delete failed ({describe(exn)})") from exn
