"""Tar members of one shard, fast: the regular files' names and bytes, unused ones seeked over.

Why not ``tarfile``: at loader rates its per-member header parsing (every field decoded,
~25 µs) costs more than reading the bytes from the page cache, and a shard holds ~14
members per object. Uncompressed tars (what :class:`c2p.schema.ShardWriter` writes) are
parsed here directly: ustar headers with their checksum, plus the pax (``x``/``g``) and GNU
long-name (``L``) extensions other writers use. Compressed tars go through ``tarfile``.

Either way a shard is complete only if it ends with the end-of-archive marker (two zero
blocks): a shard cut short raises ``tarfile.ReadError``, as does a garbled header.
"""

from __future__ import annotations

import io
import tarfile
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterator

from c2p import storage

if TYPE_CHECKING:
    from c2p.storage.shardcache import ShardCache

BLOCK = 512
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")
_REGULAR = (b"0", b"\x00", b"7")


def open_shard(url: str, cache: "ShardCache | None" = None) -> BinaryIO:
    """The tar at ``url`` as a stream read front to back: the local file; for an ``s3://``
    address, ``cache``'s copy or stream when given, else the object's stream, whose GET is sent
    now from a background thread. Opening an object raises nothing: its errors surface at the
    first read, with the usual retries."""
    if not storage.is_remote(url):
        return open(url, "rb")
    if cache is not None:
        return cache.open(url)
    return storage.open_binary(url, request_now=True)


def iter_members(url: str, select: Callable[[str], bool] | None = None, cache: "ShardCache | None" = None,
                 opened: BinaryIO | None = None) -> Iterator[tuple[str, bytes]]:
    """``(name, data)`` of each regular member of the tar at ``url`` whose name ``select`` accepts.

    ``url``: a path or an ``s3://`` address (read as one sequential stream that resumes after
    a dropped connection: :mod:`c2p.storage`; through ``cache``, a
    :class:`~c2p.storage.shardcache.ShardCache`, when given). ``opened``: the stream of
    :func:`open_shard` for ``url`` when the caller opened it early (it is closed here). Raises
    ``tarfile.ReadError`` (not a tar, bad checksum, truncated) or ``OSError``
    (``c2p.storage.StorageError`` after the retries).
    """
    with opened if opened is not None else open_shard(url, cache) as f:
        magic = f.read(6)
        if magic.startswith(_COMPRESSED_MAGIC):
            # Foreign compressed tars only (c2p writes plain ones): tarfile needs to seek back.
            data = magic + f.read() if storage.is_remote(url) else None
            yield from _tarfile_members(io.BytesIO(data) if data is not None else url, select)
        else:
            yield from _ustar_members(_Rewound(f, magic), select)
        if hasattr(f, "finish"):  # read whole and intact: the cache may keep its copy
            f.finish()


class _Rewound:
    """``f`` with ``head`` (bytes already read from its start) put back in front: a stream is not
    re-opened to look at its first bytes twice."""

    def __init__(self, f, head: bytes):
        self.f, self.head = f, head

    def read(self, n: int) -> bytes:
        if not self.head:
            return self.f.read(n)
        take, self.head = self.head[:n], self.head[n:]
        return take + (self.f.read(n - len(take)) if n > len(take) else b"")

    def seek(self, offset: int, whence: int) -> None:
        assert whence == 1 and not self.head, "only relative seeks after the first header"
        self.f.seek(offset, whence)


def _octal(field: bytes, what: str, offset: int) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for values that do not fit the octal field
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\x00", 1)[0].strip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise tarfile.ReadError(f"tar header at byte {offset}: {what} {field!r} is not octal") from None


def _pax_records(data: bytes) -> dict[str, str]:
    """``"<len> <key>=<value>\\n"`` records of a pax extended header."""
    records, pos = {}, 0
    while pos < len(data):
        length = int(data[pos : data.index(b" ", pos)])
        key, _, value = data[data.index(b" ", pos) + 1 : pos + length - 1].partition(b"=")
        records[key.decode()] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


def _ustar_members(f, select: Callable[[str], bool] | None) -> Iterator[tuple[str, bytes]]:
    offset = 0
    override: dict[str, str] = {}  # from a pax 'x' or GNU 'L' header: applies to the next member
    while True:
        header = f.read(BLOCK)
        if len(header) < BLOCK:
            raise tarfile.ReadError(f"tar ends inside or before a header at byte {offset}: truncated")
        if header.count(0) == BLOCK:  # end-of-archive: a second zero block must follow
            second = f.read(BLOCK)
            if len(second) < BLOCK or second.count(0) != BLOCK:
                raise tarfile.ReadError(f"tar has a zero block at byte {offset} but no end-of-archive marker")
            return
        stored = _octal(header[148:156], "checksum", offset)
        if stored != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            raise tarfile.ReadError(f"tar header at byte {offset}: bad checksum (not a tar, or garbled)")
        size = _octal(header[124:136], "size", offset)
        kind = header[156:157]
        padded = (size + BLOCK - 1) // BLOCK * BLOCK
        offset += BLOCK
        if kind in (b"x", b"L"):
            data = f.read(padded)
            if len(data) < padded:
                raise tarfile.ReadError(f"tar extended header at byte {offset} is cut short: truncated")
            if kind == b"L":
                override["path"] = data[:size].split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")
            else:
                override.update(_pax_records(data[:size]))
            offset += padded
            continue
        name = header[:100].split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")
        if header[257:262] == b"ustar":
            prefix = header[345:500].split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")
            name = f"{prefix}/{name}" if prefix else name
        name = override.pop("path", name)
        size = int(override.pop("size", size))
        padded = (size + BLOCK - 1) // BLOCK * BLOCK
        override.clear()
        if kind in _REGULAR and not name.startswith("__") and (select is None or select(name)):
            data = f.read(size)
            if len(data) < size:
                raise tarfile.ReadError(f"tar member {name} at byte {offset} is cut short: truncated")
            f.seek(padded - size, 1)
            yield name, data
        else:  # unused member, directory, link, pax global header: skip its data unread
            f.seek(padded, 1)
        offset += padded


def _tarfile_members(source, select: Callable[[str], bool] | None) -> Iterator[tuple[str, bytes]]:
    opened = tarfile.open(fileobj=source, mode="r:*") if isinstance(source, io.BytesIO) else tarfile.open(source, mode="r:*")
    with opened as tar:
        while (info := tar.next()) is not None:
            tar.members = []  # never looked back at: keep memory flat on big shards
            if not info.isreg() or info.name.startswith("__") or (select is not None and not select(info.name)):
                continue
            reader = tar.extractfile(info)
            assert reader is not None  # a regular file
            yield info.name, reader.read()
        # tarfile stops quietly at a cut-off header: require the end-of-archive marker.
        tar.fileobj.seek(tar.offset)
        end = tar.fileobj.read(2 * BLOCK)
        if len(end) < 2 * BLOCK or end.count(0) != len(end):
            raise tarfile.ReadError(f"no end-of-archive marker at byte {tar.offset}: truncated or garbled")
