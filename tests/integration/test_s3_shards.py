"""Shards in object storage, read side: a real S3-compatible server (SeaweedFS on 127.0.0.1)
holds a shard directory; the loader resolves it with one listing, streams its tars without
downloading them first, resumes reads after the server stopped answering, and counts and skips
a truncated object as it does a truncated local tar."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch
from testdata import loader_config, take, write_loader_corpora

from c2p.data import PretrainStream
from c2p.data.reader import ReadStats, read_samples, read_shard
from c2p.data.shardlist import resolve_shards


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    return write_loader_corpora(tmp_path_factory.mktemp("s3-shards"))


@pytest.fixture(scope="module")
def remote(s3_server, corpora):
    """``alpha`` uploaded to s3://c2p-shards/alpha; returns (local dir, its address)."""
    url = s3_server.bucket("c2p-shards") + "/alpha"
    s3_server.upload_dir(corpora["alpha"], url)
    return corpora["alpha"], url


def test_a_prefix_resolves_like_its_local_copy(remote):
    local, url = remote
    a, b = resolve_shards(str(local)), resolve_shards(url)
    assert [u.rsplit("/", 1)[1] for u in b.urls] == [u.rsplit("/", 1)[1] for u in a.urls]
    assert b.urls[0].startswith(url + "/shard-") and b.sizes == a.sizes and b.labels == a.labels and b.corpus == a.corpus
    with pytest.raises(FileNotFoundError, match=r"s3://c2p-shards/nothing-here/index.json does not exist"):
        resolve_shards("s3://c2p-shards/nothing-here")
    with pytest.raises(FileNotFoundError, match=r"shard-000004.tar .*does not exist \(and 95 more\)"):
        resolve_shards(url + "/shard-{000000..000099}.tar")


def test_tars_stream_the_same_samples_as_local_disk(remote):
    local, url = remote
    for lu, ru in zip(resolve_shards(str(local)).urls, resolve_shards(url).urls):
        here, there = list(read_shard(lu)), list(read_shard(ru))
        assert [s["__key__"] for s in here] == [s["__key__"] for s in there]
        assert all({k: v for k, v in x.items() if k != "__url__"} == {k: v for k, v in y.items() if k != "__url__"}
                   for x, y in zip(here, there))
    kw = dict(rank=0, world_size=1, seed=3, batch_size=4)
    a, b = take(PretrainStream(loader_config([str(local)]), **kw), 3), take(PretrainStream(loader_config([url]), **kw), 3)
    assert [x["key"] for x in a] == [x["key"] for x in b]
    assert all(torch.equal(x["points"], y["points"]) and torch.equal(x["image"], y["image"]) for x, y in zip(a, b))


def test_a_truncated_object_is_counted_and_skipped(s3_server, remote):
    local, url = remote
    tars = resolve_shards(str(local)).urls
    data = open(tars[0], "rb").read()
    s3_server.client().put_object(Bucket="c2p-shards", Key="cut/shard-000000.tar", Body=data[: len(data) // 2])
    stats = ReadStats()
    got = list(read_samples(["s3://c2p-shards/cut/shard-000000.tar", tars[1]], stats))
    assert stats.corrupt_shards == 1 and "shard s3://c2p-shards/cut/shard-000000.tar" in stats.last_error
    assert len(got) >= len(list(read_shard(tars[1])))


def test_a_shard_cache_keeps_whole_tars_within_its_bound(s3_server, remote, tmp_path):
    """``data.cache_dir``: the first read streams from the bucket and keeps a copy of what it
    read; the second read of the same address comes from disk with the same samples; a damaged
    tar leaves no copy; a replaced object is read again; the cache stays within its bound."""
    from c2p.storage.shardcache import ShardCache

    local, url = remote
    urls = resolve_shards(url).urls
    sizes = [os.path.getsize(u) for u in resolve_shards(str(local)).urls]
    cache = ShardCache(tmp_path / "cache", max_bytes=sizes[0] + sizes[1])
    first = [s["__key__"] for s in read_samples([urls[0]], ReadStats(), cache=cache)]
    copy = cache.path(urls[0])
    assert copy.read_bytes() == open(resolve_shards(str(local)).urls[0], "rb").read()
    assert [s["__key__"] for s in read_samples([urls[0]], ReadStats(), cache=cache)] == first
    assert (cache.hits, cache.misses) == (1, 1)

    data = copy.read_bytes()
    s3_server.client().put_object(Bucket="c2p-shards", Key="cut/shard-000009.tar", Body=data[: len(data) // 2])
    stats = ReadStats()
    list(read_samples(["s3://c2p-shards/cut/shard-000009.tar"], stats, cache=cache))
    assert stats.corrupt_shards == 1 and not cache.path("s3://c2p-shards/cut/shard-000009.tar").exists()
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    s3_server.client().put_object(Bucket="c2p-shards", Key="cut/shard-000009.tar", Body=data)  # replaced: read again
    list(read_samples(["s3://c2p-shards/cut/shard-000009.tar"], ReadStats(), cache=cache))
    assert cache.misses == 3 and cache.path("s3://c2p-shards/cut/shard-000009.tar").read_bytes() == data

    list(read_samples(urls[1:3], ReadStats(), cache=cache))
    kept = [p for p in (tmp_path / "cache").rglob("*.tar")]
    assert sum(p.stat().st_size for p in kept) <= sizes[0] + sizes[1] and cache.path(urls[2]) in kept

    # Through the loader's config: the same batches, and the tars it read are cached.
    import dataclasses

    kw = dict(rank=0, world_size=1, seed=3, batch_size=4)
    cfg = dataclasses.replace(loader_config([url]), cache_dir=str(tmp_path / "loader-cache"), workers=0)
    plain, cached = take(PretrainStream(loader_config([url]), **kw), 3), take(PretrainStream(cfg, **kw), 3)
    assert [b["key"] for b in plain] == [b["key"] for b in cached]
    assert list((tmp_path / "loader-cache").rglob("shard-*.tar"))


def test_an_empty_object_leaves_the_connection_ready_for_the_next_put(s3_server, monkeypatch):
    """An empty PUT (the ``errors.jsonl`` of a render without errors), then a PUT with a body on
    the same keep-alive connection: the second is answered at its first attempt, not after its
    read timeout and a retry."""
    import c2p.storage.s3 as s3mod
    from c2p import storage

    monkeypatch.setattr(s3mod, "READ_TIMEOUT_S", 2.0)
    s3mod._clients.clear()
    url = s3_server.bucket("c2p-empty")
    try:
        for i in range(3):
            storage.put_bytes(b"", f"{url}/empty-{i}")
            reply = s3mod.client().put_object(Bucket="c2p-empty", Key=f"full-{i}", Body=b"x" * 1000)
            assert reply["ResponseMetadata"]["RetryAttempts"] == 0, f"PUT {i} after an empty one was retried"
    finally:
        s3mod._clients.clear()
    assert storage.read_bytes(f"{url}/empty-0") == b""


def test_reads_resume_after_the_server_stops_answering(s3_server, remote, monkeypatch):
    """The server is frozen (SIGSTOP) for 4 s while a tar streams: the read times out, backs off,
    re-opens at the byte it reached and finishes with every sample, and the retries are counted."""
    import c2p.storage.s3 as s3mod

    local, url = remote
    monkeypatch.setattr(s3mod, "SEEK_READ_LIMIT", 0)  # every member seek re-opens: many requests in flight
    monkeypatch.setattr(s3mod, "READ_CHUNK", 1)  # and no read-ahead: each read asks the body for what it needs
    s3mod._clients.clear()
    monkeypatch.setattr(s3mod, "READ_TIMEOUT_S", 1.0)
    expected = [s["__key__"] for s in read_shard(resolve_shards(str(local)).urls[0])]
    stats = ReadStats()
    samples = read_samples([resolve_shards(url).urls[0]], stats)
    first = next(samples)
    s3_server.pause()
    timer = threading.Timer(4.0, s3_server.resume)
    timer.start()
    try:
        t0 = time.monotonic()
        rest = list(samples)
    finally:
        timer.cancel()
        s3_server.resume()
        s3mod._clients.clear()
    assert [first["__key__"]] + [s["__key__"] for s in rest] == expected
    assert stats.corrupt_shards == 0 and stats.read_retries >= 1, stats
    assert time.monotonic() - t0 >= 3.0  # it waited for the server rather than skipping


def test_render_job_writes_to_a_bucket_byte_identical_and_resumes(s3_server, tmp_path, monkeypatch):
    """``--out s3://...``: every object the job writes is the local render's, byte for byte; the
    tars come from the workers; the contact sheets are read back from the bucket and uploaded
    beside them; a re-run after losing a shard renders only that shard; the loader reads the result."""
    import hashlib

    import ray

    from c2p.config.core import load_config
    from c2p.config.render import RenderJobConfig
    from c2p.corpora.synthetic import write_synthetic
    from c2p.shards import run_render_job

    monkeypatch.setenv("C2P_STAGE_DIR", str(tmp_path / "stage"))
    root = write_synthetic(tmp_path / "corpus", layout="shapenet", per_class=2, seed=0, classes=["box", "chair", "mug"])
    small = [f"corpus.root={root}", "corpus.name=synthetic", "views.set=6", "views.image_size=24", "job.points=128",
             "job.previews=4", "job.progress=false", "job.shard_size=2"]
    url = s3_server.bucket("c2p-render") + "/syn"
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        local = run_render_job(load_config(RenderJobConfig, None, small + [f"out={tmp_path / 'local'}"]))
        first = run_render_job(load_config(RenderJobConfig, None, small + [f"out={url}"]))
        names = sorted(p.name for p in (tmp_path / "local").glob("shard-*.tar"))
        c = s3_server.client()

        def remote_sha(key: str) -> str:
            return hashlib.sha256(c.get_object(Bucket="c2p-render", Key=f"syn/{key}")["Body"].read()).hexdigest()

        def local_sha(key: str) -> str:
            return hashlib.sha256((tmp_path / "local" / key).read_bytes()).hexdigest()

        for key in names + ["index.json", "errors.jsonl", "previews/preview-000.png"]:
            assert remote_sha(key) == local_sha(key), key
        assert first["samples"] == local["samples"] == 6 and first["out"] == url
        assert first["previews"] == [f"{url}/previews/preview-000.png"]
        assert not list((tmp_path / "stage").rglob("shard-*.tar"))  # uploaded by the workers, not kept

        c.delete_object(Bucket="c2p-render", Key="syn/" + names[1])  # a lost shard: its record stays, its tar is gone
        again = run_render_job(load_config(RenderJobConfig, None, small + [f"out={url}"]))
        assert again["shards_rendered"] == 1 and again["shards_skipped"] == len(names) - 1
        assert all(remote_sha(k) == local_sha(k) for k in names + ["index.json"])
    finally:
        ray.shutdown()
    source = resolve_shards(url)
    assert source.num_samples == 6 and len(source.urls) == len(names)
