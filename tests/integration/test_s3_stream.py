"""One object read as a stream (a real SeaweedFS on 127.0.0.1): the buffered stream the loader reads
tars through gives the object's bytes under any mix of reads and seeks, also after the server
stopped answering mid-read, also when its GET was sent early (while the previous shard is read);
and the loader's one-shard-ahead opening reads what local disk reads, counts a missing object,
and feeds the shard cache a tar drawn twice in a row."""

from __future__ import annotations

import io
import os
import random
import threading
from pathlib import Path

import pytest
from testdata import write_loader_corpora

from c2p import storage
from c2p.data.reader import ReadStats, read_samples
from c2p.data.shardlist import resolve_shards

SIZE = (3 << 20) + 12345  # a few buffers' worth, and not a whole number of them


@pytest.fixture(scope="module")
def blob(s3_server, tmp_path_factory) -> tuple[str, bytes]:
    """A random object s3://c2p-stream/blob.bin; returns (address, its bytes)."""
    data = random.Random(0).randbytes(SIZE)
    s3_server.bucket("c2p-stream")
    s3_server.client().put_object(Bucket="c2p-stream", Key="blob.bin", Body=data)
    return "s3://c2p-stream/blob.bin", data


@pytest.fixture
def small_reads(monkeypatch):
    """64 KiB buffers and a 256 KiB limit for read-and-drop seeks: a 3 MiB object takes many body
    reads, and seeks both drop bytes and re-open with a ranged GET."""
    import c2p.storage.s3 as s3mod

    monkeypatch.setattr(s3mod, "READ_CHUNK", 64 << 10)
    monkeypatch.setattr(s3mod, "SEEK_READ_LIMIT", 256 << 10)


def _script(rng: random.Random) -> list[tuple[str, int, int]]:
    """Reads and seeks as a tar reader makes them (headers, members, skips) plus the ones it does not."""
    steps = [("read", 512, 0), ("seek", 1000, io.SEEK_CUR), ("read", 10, 0), ("seek", 300 << 10, io.SEEK_CUR),
             ("read", 70000, 0), ("seek", 5, io.SEEK_SET), ("read", 100, 0), ("seek", -1000, io.SEEK_END), ("read", 5000, 0),
             ("seek", 2 << 20, io.SEEK_SET)]
    for _ in range(300):
        steps.append(("read", rng.choice([512, 1, 48 << 10, 200 << 10]), 0) if rng.random() < 0.6
                     else ("seek", rng.choice([512, 3 << 10, 100 << 10]), io.SEEK_CUR))
    return steps + [("read", -1, 0)]


@pytest.mark.parametrize("request_now", [False, True])
def test_reads_and_seeks_give_the_objects_bytes(blob, small_reads, request_now):
    url, data = blob
    local = io.BytesIO(data)
    with storage.open_binary(url, request_now=request_now) as f:
        for what, n, whence in _script(random.Random(1)):
            if what == "read":
                assert f.read(n) == local.read(n)
            else:
                assert f.seek(n, whence) == local.seek(n, whence)
            assert f.tell() == local.tell()
        assert f.raw.size == SIZE and f.raw.etag


def test_a_read_resumes_with_the_same_bytes_after_the_server_stops_answering(s3_server, blob, small_reads, monkeypatch):
    """The server freezes (SIGSTOP, 3 s) with most of a 48 MiB object still to come (more than the
    sockets' buffers hold): the body read times out, backs off, re-opens with a ranged GET at the
    byte it reached and goes on; the bytes are the object's and the retries are counted. The same
    when the server is frozen before the early GET is answered."""
    import c2p.storage.s3 as s3mod

    big = random.Random(2).randbytes(48 << 20)
    s3_server.client().put_object(Bucket="c2p-stream", Key="big.bin", Body=big)
    monkeypatch.setattr(s3mod, "READ_TIMEOUT_S", 1.0)
    s3mod._clients.clear()
    storage.take_retries()
    timers = [threading.Timer(3.0, s3_server.resume) for _ in range(2)]
    try:
        with storage.open_binary("s3://c2p-stream/big.bin", request_now=True) as f:
            head = f.read(1 << 20)
            s3_server.pause()
            timers[0].start()
            rest = f.read()
        assert head + rest == big
        assert storage.take_retries() >= 1

        url, data = blob
        s3_server.pause()
        timers[1].start()
        with storage.open_binary(url, request_now=True) as f:
            assert f.read(100) == data[:100]
            assert f.seek(SIZE - 10) == SIZE - 10 and f.read() == data[-10:]
        assert storage.take_retries() >= 1
    finally:
        for timer in timers:
            timer.cancel()
        s3_server.resume()
        s3mod._clients.clear()


def test_an_early_get_is_taken_or_dropped_as_the_stream_moves(blob, small_reads):
    url, data = blob
    with storage.open_binary(url, request_now=True) as f:  # a seek before the first read: the early body starts elsewhere
        f.seek(SIZE - 100)
        assert f.read() == data[-100:]
    with storage.open_binary(url, request_now=True):  # closed unread: nothing to read, nothing raised
        pass
    missing = storage.open_binary("s3://c2p-stream/none.bin", request_now=True)  # opening raises nothing
    with pytest.raises(FileNotFoundError, match="s3://c2p-stream/none.bin does not exist"):
        missing.read(1)
    missing.close()


@pytest.fixture(scope="module")
def remote_alpha(s3_server, tmp_path_factory):
    """``alpha`` (4 shards) in s3://c2p-ahead/alpha; returns (local tar paths, their addresses)."""
    alpha = write_loader_corpora(tmp_path_factory.mktemp("ahead"))["alpha"]
    url = s3_server.bucket("c2p-ahead") + "/alpha"
    s3_server.upload_dir(alpha, url)
    return resolve_shards(str(alpha)).urls, resolve_shards(url).urls


def test_shards_opened_one_ahead_read_as_local_disk_does(remote_alpha):
    """read_samples opens each tar while the one before is read: the same samples as from disk,
    member for member, and a missing object costs its own shard only."""
    local, remote = remote_alpha
    order = [0, 2, 2, 1, 3, 0]

    def samples(urls, stats):
        return [{k: v for k, v in s.items() if k != "__url__"} for s in read_samples(urls, stats)]

    here, there = ReadStats(), ReadStats()
    assert samples([local[i] for i in order], here) == samples([remote[i] for i in order], there)
    assert there.shards_opened == len(order) and there.corrupt_shards == 0

    stats = ReadStats()
    gone = remote[0].rsplit("/", 1)[0] + "/shard-009999.tar"
    got = samples([remote[1], gone, remote[2]], stats)
    assert got == samples([local[1], local[2]], ReadStats())
    assert stats.corrupt_shards == 1 and gone in stats.last_error and "does not exist" in stats.last_error


def test_the_shard_cache_keeps_a_tar_drawn_twice_in_a_row(remote_alpha, tmp_path):
    """A resampled stream may draw the same tar twice in a row; opened one ahead, both reads of it
    stream from the bucket at once, each into a copy of its own: both whole, one kept."""
    from c2p.storage.shardcache import ShardCache

    local, remote = remote_alpha
    cache = ShardCache(tmp_path / "cache", max_bytes=1 << 30)
    stats = ReadStats()
    keys = [s["__key__"] for s in read_samples([remote[1], remote[1], remote[2]], stats, cache=cache)]
    assert stats.corrupt_shards == 0 and cache.misses == 3
    assert keys == [s["__key__"] for s in read_samples([local[1], local[1], local[2]], ReadStats())]
    assert cache.path(remote[1]).read_bytes() == Path(local[1]).read_bytes()
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    assert os.path.getsize(cache.path(remote[2])) == os.path.getsize(local[2])
