"""Other readers of what the render job wrote in a bucket (a real SeaweedFS on 127.0.0.1): plain
WebDataset through a ``pipe:`` URL over c2p's own client (``python -m c2p.storage.cat``), and Ray
Data's ``read_webdataset`` over pyarrow's S3 filesystem on the same environment
(:mod:`c2p.storage.arrow`). Both see the samples, member for member, that c2p's loader reads."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest

from c2p.data.reader import read_shard
from c2p.data.shardlist import resolve_shards


@pytest.fixture(scope="module")
def rendered(s3_server, tmp_path_factory):
    """A synthetic corpus rendered by the job to s3://c2p-readers/syn (3 shards of 2 objects); returns (address, shard urls)."""
    import ray

    from c2p.config.core import load_config
    from c2p.config.render import RenderJobConfig
    from c2p.corpora.synthetic import write_synthetic
    from c2p.shards import run_render_job

    tmp = tmp_path_factory.mktemp("s3-readers")
    root = write_synthetic(tmp / "corpus", layout="shapenet", per_class=2, seed=0, classes=["box", "chair", "mug"])
    url = s3_server.bucket("c2p-readers") + "/syn"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("C2P_STAGE_DIR", str(tmp / "stage"))
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        try:
            run_render_job(load_config(RenderJobConfig, None, [f"corpus.root={root}", "corpus.name=synthetic", "views.set=6",
                                                               "views.image_size=24", "job.points=128", "job.previews=0",
                                                               "job.progress=false", "job.shard_size=2", f"out={url}"]))
        finally:
            ray.shutdown()
    return url, resolve_shards(url).urls


def _ours(urls: list[str]) -> dict[str, dict]:
    return {s["__key__"]: {k: v for k, v in s.items() if not k.startswith("__")} for u in urls for s in read_shard(u)}


def test_webdataset_reads_the_bucket_through_a_pipe_url(rendered):
    import webdataset as wds

    url, urls = rendered
    assert len(urls) == 3
    pattern = f"pipe:{sys.executable} -m c2p.storage.cat {url}/shard-{{000000..000002}}.tar"
    theirs = {s["__key__"]: {k: v for k, v in s.items() if not k.startswith("__")} for s in wds.WebDataset(pattern, shardshuffle=False)}
    assert theirs == _ours(urls) and len(theirs) == 6
    missing = subprocess.run([sys.executable, "-m", "c2p.storage.cat", f"{url}/shard-000099.tar"], capture_output=True, text=True)
    assert missing.returncode == 1 and f"{url}/shard-000099.tar does not exist" in missing.stderr


def test_ray_data_reads_the_bucket_with_a_pyarrow_s3_filesystem(rendered):
    import ray

    from c2p.storage.arrow import arrow_filesystem, arrow_paths

    _url, urls = rendered
    ours = _ours(urls)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        rows = ray.data.read_webdataset(arrow_paths(urls), filesystem=arrow_filesystem()).take_all()
    finally:
        ray.shutdown()
    assert sorted(r["__key__"] for r in rows) == sorted(ours) and len(rows) == 6
    for row in rows:  # Ray Data decodes by extension: .npy to arrays, .json to dicts
        mine = ours[row["__key__"]]
        assert np.array_equal(row["points.npy"], np.load(io.BytesIO(mine["points.npy"])))
        assert row["meta.json"] == json.loads(mine["meta.json"])
        assert {k for k in row if not k.startswith("__")} == set(mine)
