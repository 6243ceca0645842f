"""S3-compatible object storage through boto3: addresses, one client per process, and a
sequential read stream that survives dropped connections.

Why boto3: it is the reference client of the S3 API, every S3-compatible store (SeaweedFS,
MinIO, Ceph RGW, R2) is tested against it, and it reads endpoint, region and credentials from
the standard places users already configure (``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``,
``AWS_REGION``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
``~/.aws/config`` and ``~/.aws/credentials``). Its "standard" retry mode already retries
throttling and 5xx answers of each request with backoff; what it cannot retry is a body that
breaks halfway through a streamed GET, which :class:`S3ReadStream` resumes with a ranged GET
from the byte where it broke. Secrets never appear in what this module raises or logs: errors
name the ``s3://`` address and the server's error code only.
"""

from __future__ import annotations

import io
import logging
import os
import random
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)

SCHEME = "s3://"
# Attempts per stream for a body that breaks (each attempt re-opens at the current byte).
READ_ATTEMPTS = int(os.environ.get("C2P_S3_READ_ATTEMPTS", "8"))
BACKOFF_S = float(os.environ.get("C2P_S3_BACKOFF_S", "0.5"))
BACKOFF_MAX_S = 20.0
# Seconds without a byte before a read is given up and retried (a server that stopped answering).
READ_TIMEOUT_S = float(os.environ.get("C2P_S3_READ_TIMEOUT_S", "60"))
# A forward seek shorter than this reads and drops the bytes instead of opening a new GET.
SEEK_READ_LIMIT = 4 << 20
# Bytes asked of the body at least per read (the buffer of open_stream): a tar's 512-byte
# headers are served from this buffer rather than one urllib3 call each (that cost had the
# imgfeat stream at 0.37x local disk).
READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class S3Path:
    """``s3://bucket/key``: ``key`` may be a prefix ("" for the bucket's root)."""

    bucket: str
    key: str

    @classmethod
    def parse(cls, url: str) -> "S3Path":
        if not url.startswith(SCHEME):
            raise ValueError(f"{url!r}: expected an s3://bucket/key address")
        bucket, _, key = url[len(SCHEME):].partition("/")
        if not bucket:
            raise ValueError(f"{url!r}: no bucket; expected s3://bucket/key")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"

    def child(self, name: str) -> "S3Path":
        return S3Path(self.bucket, f"{self.key.rstrip('/')}/{name}" if self.key else name)


_clients: dict[int, object] = {}
_lock = threading.Lock()


def client():
    """The boto3 S3 client of this process (created on first use; a forked worker makes its own:
    boto3 clients must not cross a fork)."""
    pid = os.getpid()
    with _lock:
        if pid not in _clients:
            import boto3
            from botocore.config import Config

            cfg = Config(retries={"max_attempts": 6, "mode": "standard"}, connect_timeout=10, read_timeout=READ_TIMEOUT_S,
                         tcp_keepalive=True)
            _clients.clear()
            s3 = boto3.session.Session().client("s3", config=cfg)
            s3.meta.events.register("before-send.s3", _no_continue_for_an_empty_body)
            _clients[pid] = s3
        return _clients[pid]


def _no_continue_for_an_empty_body(request, **_) -> None:
    """Send a PUT without a body (an empty ``errors.jsonl``) without ``Expect: 100-continue``.

    botocore asks for a 100 before every PUT body, even an empty one. A server may answer an
    empty one at once without the 100 (HTTP allows it: there is nothing to wait for), and
    SeaweedFS does; botocore then misses the answer to the next PUT on that keep-alive connection
    and waits out its read timeout (60 s) before it retries. Without the header, the empty PUT is
    a plain request and the connection stays in step. ``expect`` is not a signed header.
    """
    if request.headers.get("Content-Length") in ("0", b"0") and "Expect" in request.headers:
        del request.headers["Expect"]


class StorageError(OSError):
    """An object store operation failed (after retries), named by its ``s3://`` address."""


def describe(exn: BaseException) -> str:
    """The error without secrets: the S3 error code and message, or the exception's type and text."""
    response = getattr(exn, "response", None)
    if isinstance(response, dict) and "Error" in response:
        err = response["Error"]
        return f"{err.get('Code', '?')}: {err.get('Message', '')}".strip()
    return f"{type(exn).__name__}: {exn}"


def is_transient(exn: BaseException) -> bool:
    """Worth another attempt: a broken connection or body, a timeout, throttling, a 5xx."""
    from botocore.exceptions import BotoCoreError, ClientError
    from urllib3.exceptions import HTTPError as Urllib3Error

    if isinstance(exn, ClientError):
        status = exn.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exn.response.get("Error", {}).get("Code", "")
        return status >= 500 or code in {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError"}
    return isinstance(exn, (BotoCoreError, Urllib3Error, ConnectionError, TimeoutError))


def is_missing(exn: BaseException) -> bool:
    response = getattr(exn, "response", None)
    return isinstance(response, dict) and response.get("Error", {}).get("Code") in {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}


class S3ReadStream(io.RawIOBase):
    """The raw (unbuffered) binary stream of one object, read front to back; :func:`open_stream`
    puts the standard ``io.BufferedReader`` in front of it, as ``open()`` does for a file.

    ``readinto(b)`` fills ``b`` unless the object ends; when the connection or the body breaks,
    the stream waits (exponential backoff with jitter) and re-opens with a ranged GET at the
    byte it had reached, up to ``attempts`` times per failure streak, calling ``on_retry`` each
    time; then it raises :class:`StorageError` naming the object. ``seek`` supports any
    position (short forward moves are read and dropped, others re-open with a ranged GET).
    ``size`` (bytes) and ``etag`` are the object's as first opened.
    """

    def __init__(self, path: S3Path, attempts: int = READ_ATTEMPTS, on_retry: Callable[[], None] | None = None):
        super().__init__()
        self.path, self.attempts, self.on_retry = path, attempts, on_retry
        self._raw_pos = 0  # the body's position (the buffered reader in front may hold bytes before it)
        self.size: int | None = None
        self.etag = ""
        self._body = None
        self._early: tuple[int, Future] | None = None  # (byte, response) of a GET sent by request_early()

    def request_early(self) -> None:
        """Send the GET now from a background thread, so that its time to first byte (6-15 ms from
        SeaweedFS on loopback here, tens of ms from a remote store) passes while the caller still
        works on something else; the server starts filling the socket's buffer meanwhile. The
        first read takes the response. A request that failed there is simply made again by that
        read, with the usual retries and errors."""
        if self._body is None and self._early is None:
            answer: Future = Future()
            self._early = (self._raw_pos, answer)
            threading.Thread(target=_answer, args=(answer, self._get), kwargs={"start": self._raw_pos}, daemon=True,
                             name=f"c2p-get {self.path}").start()

    def _get(self, start: int) -> dict:
        kw = {"Range": f"bytes={start}-"} if start else {}
        return client().get_object(Bucket=self.path.bucket, Key=self.path.key, **kw)

    def _open(self) -> None:
        resp = None
        if self._early is not None:
            (start, answer), self._early = self._early, None
            try:
                resp = answer.result()
            except Exception as exn:  # made again below, where errors are told apart and retried
                log.debug("%s: early GET failed (%s); sending it again", self.path, describe(exn))
            if resp is not None and start != self._raw_pos:  # a seek since: that body starts elsewhere
                _close_body(resp)
                resp = None
        if resp is None:
            resp = self._get(self._raw_pos)
        # botocore's own retries of the request (throttling, 5xx, timeouts) count as retries too.
        for _ in range(int(resp.get("ResponseMetadata", {}).get("RetryAttempts", 0))):
            if self.on_retry:
                self.on_retry()
        self._body = resp["Body"]
        if self.size is None:
            self.size = self._raw_pos + int(resp["ContentLength"])
            self.etag = str(resp.get("ETag", "")).strip('"')

    def _drop(self) -> None:
        if self._body is not None:
            try:
                self._body.close()
            except Exception:
                pass
            self._body = None

    def _read_raw(self, n: int = -1, whole: bool = True) -> bytes:
        """``n`` bytes (all: -1) of the body from ``_raw_pos``, resuming after breaks; ``whole=False``:
        what arrived first, up to ``n`` bytes (at least one unless the object ends)."""
        chunks, want = [], n
        failures = 0
        while want != 0:
            if self.size is not None and self._raw_pos >= self.size:
                break
            try:
                if self._body is None:
                    self._open()
                    if self.size is not None and self._raw_pos >= self.size:
                        break
                data = self._body.read(want if want > 0 else None)
            except Exception as exn:
                if is_missing(exn):
                    raise FileNotFoundError(f"{self.path} does not exist") from None
                if not is_transient(exn) or failures + 1 >= self.attempts:
                    raise StorageError(f"{self.path}: read failed at byte {self._raw_pos} after {failures + 1} attempts "
                                       f"({describe(exn)})") from exn
                failures += 1
                self._drop()
                if self.on_retry:
                    self.on_retry()
                delay = min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (failures - 1)) * (0.5 + random.random())
                log.warning("%s: %s at byte %d; retrying in %.1f s (%d/%d)", self.path, describe(exn), self._raw_pos, delay,
                            failures, self.attempts - 1)
                time.sleep(delay)
                continue
            if not data:  # the body ended before the object's size: the connection dropped
                if self.size is not None and self._raw_pos < self.size:
                    self._drop()
                    failures += 1
                    if failures >= self.attempts:
                        raise StorageError(f"{self.path}: body ended at byte {self._raw_pos} of {self.size} after {failures} attempts")
                    if self.on_retry:
                        self.on_retry()
                    continue
                break
            failures = 0
            chunks.append(data)
            self._raw_pos += len(data)
            if want > 0:
                want -= len(data)
            if not whole:
                break
        return b"".join(chunks)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._read_raw(len(b), whole=False)
        b[:len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self._read_raw(-1)  # one body read (RawIOBase's would ask for 8 KiB at a time)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset if whence == io.SEEK_SET else self._raw_pos + offset if whence == io.SEEK_CUR else None
        if target is None:
            if self.size is None:
                self._open()
            target = self.size + offset
        if self._body is not None and 0 < target - self._raw_pos <= SEEK_READ_LIMIT:
            self._read_raw(target - self._raw_pos)
        if target != self._raw_pos:  # far ahead, back, or past the object's end (where reads give b"")
            self._drop()
            self._raw_pos = target
        return target

    def tell(self) -> int:
        return self._raw_pos

    def close(self) -> None:
        if self._early is not None:  # a response nobody will read: closed when (or as soon as) it arrives
            self._early[1].add_done_callback(lambda answer: answer.exception() is None and _close_body(answer.result()))
            self._early = None
        self._drop()
        super().close()


def _answer(answer: Future, call: Callable[..., dict], **kw) -> None:
    """``call(**kw)``'s result or exception into ``answer`` (the body of an early GET's thread)."""
    try:
        answer.set_result(call(**kw))
    except BaseException as exn:  # noqa: BLE001 -- handed to the reader
        answer.set_exception(exn)


def _close_body(resp: dict) -> None:
    try:
        resp["Body"].close()
    except Exception:
        pass


def open_stream(path: S3Path, on_retry: Callable[[], None] | None = None, request_now: bool = False) -> io.BufferedReader:
    """The object ``path`` as a buffered binary stream: an :class:`S3ReadStream` (resuming,
    retrying) behind ``io.BufferedReader``, whose reads and seeks within its ``READ_CHUNK``
    buffer run in C, as for a file from ``open()``. ``request_now``: the GET is sent at once
    from a background thread (:meth:`S3ReadStream.request_early`). ``.raw.size`` and
    ``.raw.etag``: the object's, once a byte was read."""
    raw = S3ReadStream(path, on_retry=on_retry)
    if request_now:
        raw.request_early()
    return io.BufferedReader(raw, buffer_size=READ_CHUNK)
