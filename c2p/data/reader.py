"""Reading raw samples out of tar shards: the one reader of c2p's tars.

Two ways in, one member loop and one grouping rule:

- :func:`read_samples` (the loader's stream over many shards, each opened while the one
  before it is read): a shard that cannot be opened, is not a tar, or ends early (a
  truncated copy) costs the samples after the damage and nothing else: the error is
  counted in :class:`ReadStats`, remembered as ``last_error``, and reading goes on with the
  next shard. Nothing sleeps and nothing is retried: in a resampled stream the same shard
  simply comes up again later.
- :func:`read_shard` (one shard, in order: previews, exports, checks): the damage raises,
  after every sample that was whole before it.

Members are grouped into samples by WebDataset's ``group_by_keys``. The member loop is
ours (:mod:`c2p.data.tarmembers`) rather than WebDataset's streaming ``tar_file_iterator``
over ``tarfile``: its headers parse ~5x faster, members the step does not use (the RGB
renders when image features are read, depth previews always) are seeked over instead of
read (tests/benchmarks/bench_loader.py), and a broken shard is counted once, not once per
failed member.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterable, Iterator, TypeVar

from webdataset.tariterators import group_by_keys

from c2p import storage
from c2p.data.tarmembers import iter_members, open_shard

if TYPE_CHECKING:
    from c2p.storage.shardcache import ShardCache

log = logging.getLogger(__name__)

# Counters that add up across workers and restarts (see ReadStats.take_delta).
COUNTERS = ("shards_opened", "corrupt_shards", "samples_read", "skipped_samples", "samples", "read_retries")


@dataclass
class ReadStats:
    """What a stream has read and skipped (counts since the last :meth:`take_delta`).

    ``corrupt_shards``: shard reads that failed (missing since start, not a tar, truncated);
    ``skipped_samples``: samples dropped for missing or undecodable members;
    ``samples_read``: raw samples out of the tars; ``samples``: samples delivered;
    ``read_retries``: reads of object-store shards resumed after a dropped connection or a
    transient server error (a shard that still fails after its retries is a corrupt shard).
    """

    shards_opened: int = 0
    corrupt_shards: int = 0
    samples_read: int = 0
    skipped_samples: int = 0
    samples: int = 0
    read_retries: int = 0
    last_error: str = ""

    def corrupt(self, url: str, exn: BaseException) -> None:
        self.corrupt_shards += 1
        self.last_error = f"shard {url}: {type(exn).__name__}: {exn}"
        log.warning("skipping the rest of corrupt shard %s: %s: %s", url, type(exn).__name__, exn)

    def skip(self, key: str, reason: str) -> None:
        self.skipped_samples += 1
        self.last_error = f"sample {key}: {reason}"
        log.debug("skipping sample %s: %s", key, reason)

    def take_delta(self) -> dict:
        """The counts since the last call (and ``last_error``), then reset: carried in batches."""
        delta = asdict(self)
        for name in COUNTERS:
            setattr(self, name, 0)
        self.last_error = ""
        return delta


T = TypeVar("T")


class CorruptSample(ValueError):
    """A member of a sample whose bytes do not decode (garbage in a whole tar): the message names
    the shard, the sample key and the member."""


def decode_member(sample: dict, member: str, decode: Callable[[bytes], T]) -> T:
    """``decode(sample[member])`` for a raw sample of :func:`read_shard`/:func:`read_samples`.

    Raises :class:`CorruptSample` naming the shard (``__url__``), the key and ``member`` when the
    member is missing or ``decode`` fails (a ``UnicodeDecodeError`` on its own names none of them).
    """
    where = f"shard {sample.get('__url__', '?')}: sample {sample.get('__key__', '?')!r}: member {member!r}"
    if member not in sample:
        raise CorruptSample(f"{where} is missing")
    try:
        return decode(sample[member])
    except Exception as e:  # any decoder's failure is the member's fault
        raise CorruptSample(f"{where} does not decode ({type(e).__name__}: {e})") from e


class NoReadableData(RuntimeError):
    """A source produced no readable sample for many shards in a row: every shard is bad."""


def read_samples(
    urls: Iterable[str],
    stats: ReadStats,
    select: Callable[[str], bool] | None = None,
    max_empty_shards: int = 100,
    cache: "ShardCache | None" = None,
) -> Iterator[dict]:
    """Raw samples ``{"__key__", "__url__", "<member>": bytes, ...}`` of the tars in ``urls``.

    ``select(member_name) -> bool`` drops members before their bytes are kept (e.g. RGB
    views when image features are used). Member suffixes keep their case. Raises
    :class:`NoReadableData` after ``max_empty_shards`` shards in a row gave no sample.
    ``cache``: local copies of ``s3://`` tars (:class:`~c2p.storage.shardcache.ShardCache`).
    """
    empty_in_a_row = 0

    def files() -> Iterator[dict]:
        nonlocal empty_in_a_row
        for url, opened in _opened_ahead(urls, cache):
            stats.shards_opened += 1
            got = 0
            try:
                if isinstance(opened, BaseException):
                    raise opened
                for file in _member_files(url, select, cache, opened):
                    got += 1
                    yield file
            except Exception as exn:  # any read failure is the shard's fault: count it, go on
                stats.corrupt(url, exn)
            stats.read_retries += storage.take_retries()
            # End-of-shard marker: group_by_keys flushes the shard's last sample (a truncated
            # shard's last sample may lack members; decoding then skips and counts it).
            yield {}
            empty_in_a_row = 0 if got else empty_in_a_row + 1
            if empty_in_a_row >= max_empty_shards:
                raise NoReadableData(
                    f"{empty_in_a_row} shards in a row gave no readable sample (last: {url}; {stats.last_error})"
                )

    def bad_group(exn: Exception) -> bool:
        stats.skip("?", f"{type(exn).__name__}: {exn}")
        return True

    for sample in group_by_keys(files(), lcase=False, handler=bad_group):
        stats.samples_read += 1
        yield sample


def read_shard(url: str | os.PathLike, select: Callable[[str], bool] | None = None) -> Iterator[dict]:
    """Raw samples ``{"__key__", "__url__", "<member>": bytes, ...}`` of the one tar at ``url``, in tar order.

    Grouped as :func:`read_samples` groups them (WebDataset's rule: a member's key is its name
    up to the first dot). Raises ``tarfile.ReadError`` when the tar is not one, is garbled or
    ends early, ``OSError`` when it cannot be read, ``ValueError`` for a member name that
    repeats within a sample. On damage the sample being read is not yielded, as it may lack
    members: every sample yielded is whole.
    """
    # group_by_keys yields a sample when the next one starts (or the tar ends cleanly), so the
    # sample in progress when iter_members raises is dropped with the exception.
    yield from group_by_keys(_member_files(url, select), lcase=False)


def _member_files(url: str | os.PathLike, select: Callable[[str], bool] | None,
                  cache: "ShardCache | None" = None, opened: BinaryIO | None = None) -> Iterator[dict]:
    """The tar's members as the file records ``group_by_keys`` groups into samples."""
    for name, data in iter_members(url, select, cache, opened):
        yield {"fname": name, "data": data, "__url__": url}


def _opened_ahead(urls: Iterable[str], cache: "ShardCache | None") -> Iterator[tuple[str, BinaryIO | Exception]]:
    """``(url, its stream)`` of each tar, opened one tar ahead of its turn: while a shard is read,
    the next one's GET is in flight and its first bytes arrive. (On SeaweedFS over loopback a
    GET's time to first byte is 6-15 ms, against ~30 ms to parse a 100-sample shard; sending it
    early made the imgfeat loader 6-11% faster.) An open that failed comes as its error, raised at
    the shard's turn, so it counts against that shard. A stream not handed out is closed."""
    pending: list[tuple[str, BinaryIO | Exception]] = []
    try:
        for url in urls:
            try:
                pending.append((url, open_shard(url, cache)))
            except Exception as exn:  # the shard's fault: raised when it is read
                pending.append((url, exn))
            if len(pending) == 2:
                yield pending.pop(0)
        while pending:
            yield pending.pop(0)
    finally:
        for _, opened in pending:
            if not isinstance(opened, Exception):
                opened.close()
