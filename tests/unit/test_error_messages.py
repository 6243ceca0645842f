"""Errors that name their input: a malformed index.json, a shard member with garbage bytes (pairs
export, the held-out loader), a render task's root cause under Ray's wrapper, the render
command's overrides on both sides of its flags, and a malformed s3:// address."""

from __future__ import annotations

import json
import traceback

import numpy as np
import pytest
from testdata import object_sample, unit_sphere_points, write_shard_dir

from c2p.cli import render
from c2p.data.pairs import export_pairs
from c2p.data.reader import CorruptSample, decode_member, read_shard
from c2p.schema import SampleMeta, ShardIndex


@pytest.fixture
def shards(tmp_path):
    """A shard directory: a whole object, then one whose meta.json and txt are garbage bytes."""
    rng = np.random.default_rng(0)
    rgb = [np.full((8, 8, 3), 200, np.uint8)]
    good = object_sample("blobs", "a", "c0", 0, unit_sphere_points(rng, 32), rgb=rgb, caption="a ball")
    bad = object_sample("blobs", "b", "c0", 0, unit_sphere_points(rng, 32), rgb=rgb, caption="x")
    bad["meta.json"], bad["txt"] = b"\xff\xfe\x00garbage", b"\xff\xfe\xfd"
    return write_shard_dir(tmp_path / "s", [[good, bad]], corpus="blobs", labels=["c0"])


@pytest.mark.parametrize("text, says", [
    ("{not json", "is not JSON"),
    (b"\xff\xfe garbage", "is not JSON"),
    ("[1, 2]", "holds a list; expected a JSON object"),
    (json.dumps({"schema_version": 1, "settings": {}, "labels": []}), "has no 'corpus'"),
    (json.dumps({"schema_version": 1, "corpus": "c", "settings": {}, "labels": [], "shards": ["a.tar"]}), "shards is ['a.tar']"),
    (json.dumps({"schema_version": 1, "corpus": "c", "settings": {}, "labels": [], "shards": {"a.tar": "8"}}), "shards['a.tar'] is '8'"),
    (json.dumps({"schema_version": 1, "corpus": "c", "settings": {}, "labels": [3], "shards": {}}), "labels is [3]"),
])
def test_a_malformed_index_is_a_value_error_naming_the_file(tmp_path, text, says):
    path = tmp_path / "index.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match="shard index") as e:
        ShardIndex.load(tmp_path)
    assert str(path) in str(e.value) and says in str(e.value)


def test_decode_member_names_shard_key_and_member(shards):
    sample = list(read_shard(shards / "shard-000000.tar"))[1]
    with pytest.raises(CorruptSample, match=r"shard .*shard-000000.tar: sample 'blobs-b': member 'txt' does not decode \(UnicodeDecodeError"):
        decode_member(sample, "txt", bytes.decode)
    with pytest.raises(CorruptSample, match="member 'points.txt' is missing"):
        decode_member(sample, "points.txt", bytes.decode)
    assert decode_member(sample, "points.npy", len) > 0


def test_pairs_export_counts_and_skips_an_object_with_garbage_members(shards, tmp_path):
    summary = export_pairs([shards], tmp_path / "pairs")
    assert summary.objects == 2 and summary.num_samples == 1  # the whole object's one view
    assert len(summary.corrupt_samples) == 1
    assert "shard-000000.tar: sample 'blobs-b': member 'txt'" in summary.corrupt_samples[0]


def test_heldout_loader_names_the_shard_sample_and_member(shards):
    from c2p.eval.retrieval import load_heldout

    with pytest.raises(RuntimeError, match=r"held-out shard .*shard-000000.tar: sample 'blobs-b': member 'meta.json' does not decode"):
        load_heldout(shards)


def test_a_failed_render_task_reports_its_root_cause_not_rays_wrapper():
    import ray.exceptions

    from c2p.shards.raytasks import task_error

    try:  # a real "No space left on device": /dev/full refuses every write
        with open("/dev/full", "wb") as f:
            f.write(b"x" * 4096)
    except OSError as cause:
        wrapped = ray.exceptions.RayTaskError("shard_task", traceback.format_exc(), cause, pid=4242, ip="127.0.0.1")
    assert str(wrapped).splitlines()[0].endswith("(pid=4242, ip=127.0.0.1)")  # what the summary used to show
    for e in (wrapped, wrapped.as_instanceof_cause()):  # ray.get raises the latter
        assert task_error(e) == ("OSError", "[Errno 28] No space left on device")
    assert task_error(ray.exceptions.WorkerCrashedError())[0] == "WorkerCrashedError"


def test_render_takes_overrides_on_both_sides_of_its_flags():
    argv = ["job.shard_size=8", "--corpus", "synthetic", "limit=3", "--root", "/r", "--out", "/o", "views.set=6", "--json", "seed=4"]
    cfg = render.build_config(render.build_parser().parse_intermixed_args(argv))
    assert (cfg.job.shard_size, cfg.corpus.limit, cfg.views.set, cfg.job.seed, cfg.out) == (8, 3, "6", 4, "/o")


def test_sample_meta_garbage_is_not_a_unicode_error_without_a_name(shards):
    sample = list(read_shard(shards / "shard-000000.tar"))[1]
    with pytest.raises(CorruptSample, match="member 'meta.json'"):
        decode_member(sample, "meta.json", SampleMeta.from_json)


@pytest.mark.parametrize("url, expect, why", [
    ("s3://", "prefix", r"'' is not a bucket name"),
    ("s3://my bucket/x", "prefix", r"'my bucket' is not a bucket name"),
    ("s3://data//syn", "prefix", r"the key '/syn' has an empty path segment"),
    ("s3://data/syn/", "object", r"is a prefix, not an object; expected s3://bucket/key \(one object\)"),
    ("/data/syn", "prefix", r"is not an s3:// address; expected s3://bucket or s3://bucket/prefix"),
])
def test_a_malformed_s3_address_is_refused_by_its_shape_alone(url, expect, why):
    from c2p import storage

    with pytest.raises(ValueError, match=why) as e:
        storage.check_url(url, expect)
    assert repr(url) in str(e.value)
    assert storage.check_url("s3://data/syn/", "prefix") == storage.S3Path("data", "syn/")
    assert storage.check_url("s3://data", "prefix") == storage.S3Path("data", "")
    assert storage.check_url("s3://Legacy_Bucket/run/depth_tower.safetensors", "object").key == "run/depth_tower.safetensors"
