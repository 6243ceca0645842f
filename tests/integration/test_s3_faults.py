"""Object storage that fails (a real SeaweedFS on 127.0.0.1): the server killed while the render job
uploads and restarted on the same data, the server frozen for 20 s while two ranks train from it,
and damaged objects in the bucket counted in the stream's metrics as damaged local tars are."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_pretrain import launch, read_metrics, write_blob_shards
from testdata import loader_config, take, write_loader_corpora

from c2p.data import PretrainStream

REPO = Path(__file__).resolve().parents[2]
RENDER = ["corpus.name=synthetic", "views.set=6", "views.image_size=24", "job.points=128", "job.previews=0",
          "job.progress=false", "job.shard_size=1"]


def _render(root: Path, out: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "c2p.cli.render", "--json", f"corpus.root={root}", f"out={out}", *RENDER],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _objects(server, bucket: str, prefix: str) -> dict[str, bytes]:
    c, out = server.client(), {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            out[obj["Key"][len(prefix) + 1:]] = c.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


@pytest.mark.slow
def test_render_survives_a_killed_server_and_a_rerun_completes_byte_identical(s3_server, tmp_path):
    """The server is killed (SIGKILL) once the job's first tars are in the bucket and restarted on
    the same data 3 s later. The job fails or retries through it; either way every tar visible in
    the bucket is whole, and a re-run completes the render byte-identical to a local one."""
    from c2p.corpora.synthetic import write_synthetic

    root = write_synthetic(tmp_path / "corpus", layout="shapenet", per_class=3, seed=0, classes=["box", "chair", "mug", "cone"])
    env = dict(os.environ, PYTHONPATH=str(REPO), C2P_STAGE_DIR=str(tmp_path / "stage"), OMP_NUM_THREADS="1")
    local = _render(root, str(tmp_path / "local"), env)
    assert local.wait(timeout=300) == 0, local.stdout.read()[-3000:]
    want = {p.name: p.read_bytes() for p in (tmp_path / "local").iterdir() if p.is_file()}
    tars = sorted(k for k in want if k.endswith(".tar"))
    assert len(tars) == 12

    url = s3_server.bucket("c2p-faults") + "/syn"
    job = _render(root, url, env)
    deadline = time.monotonic() + 240
    while not any(k.endswith(".tar") for k in _objects(s3_server, "c2p-faults", "syn")):
        assert job.poll() is None and time.monotonic() < deadline, "the job ended before its first tar was seen"
        time.sleep(0.2)
    s3_server.kill()
    time.sleep(3)
    s3_server.start()
    first_rc = job.wait(timeout=300)
    seen = _objects(s3_server, "c2p-faults", "syn")
    partial = [k for k in seen if k.endswith(".tar") and seen[k] != want[k]]
    assert not partial, f"tars in the bucket that are not the whole shard: {partial}"
    assert first_rc in (0, 1), job.stdout.read()[-3000:]  # done, or "some shards failed": re-run

    again = _render(root, url, env)
    assert again.wait(timeout=300) == 0, again.stdout.read()[-3000:]
    got = _objects(s3_server, "c2p-faults", "syn")
    assert sorted(k for k in got if k.endswith(".tar")) == tars
    for name in tars + ["index.json", "errors.jsonl"]:
        assert hashlib.sha256(got[name]).hexdigest() == hashlib.sha256(want[name]).hexdigest(), name


@pytest.mark.slow
def test_training_waits_for_a_server_frozen_for_20_seconds(s3_server, tmp_path):
    """Two ranks stream from the bucket; at step 2 the server stops answering (SIGSTOP) for 20 s.
    The reads time out, back off and resume where they broke: every step is trained, on whole
    shards (no shard skipped), and the retries are in the metrics."""
    shards = write_blob_shards(tmp_path / "blobs")
    url = s3_server.bucket("c2p-freeze") + "/blobs"
    s3_server.upload_dir(shards, url)
    overrides = [f"data.shards=[{url}]", "data.imgfeat_tag=tiny", f"run.dir={tmp_path}", "run.name=frozen",
                 "train.log_every=1", "train.steps=30", "checkpoint.every=100", "checkpoint.export=false"]
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(out=launch(2, overrides, env={"C2P_S3_READ_TIMEOUT_S": "2"},
                                                                       timeout=400)))
    runner.start()
    metrics = tmp_path / "frozen" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        assert runner.is_alive() and time.monotonic() < deadline, "training did not reach step 2"
        time.sleep(0.1)
    s3_server.pause()
    try:
        time.sleep(20)
    finally:
        s3_server.resume()
    runner.join(timeout=420)
    assert "out" in result, "the ranks did not finish"
    m = read_metrics(tmp_path / "frozen")
    assert [r["step"] for r in m] == list(range(1, 31)) and all(r["loss"] == r["loss"] for r in m)
    assert sum(r["read_retries"] for r in m) >= 1
    assert sum(r["corrupt_shards"] for r in m) == 0


def test_damaged_objects_count_in_the_stream_metrics_as_damaged_local_tars_do(s3_server, tmp_path):
    """A truncated tar and a garbage one in the bucket: the stream skips them and counts them
    exactly as it does for the same files on local disk (the same batches come out)."""
    broken = write_loader_corpora(tmp_path)["broken"]
    url = s3_server.bucket("c2p-damaged") + "/broken"
    s3_server.upload_dir(broken, url)
    kw = dict(rank=0, world_size=1, seed=5, batch_size=4)
    here, there = PretrainStream(loader_config([broken]), **kw), PretrainStream(loader_config([url]), **kw)
    a, b = take(here, 12), take(there, 12)
    assert [x["key"] for x in a] == [x["key"] for x in b]
    local, remote = here.stats(), there.stats()
    assert remote["corrupt_shards"] >= 2 and remote["skipped_samples"] >= 1
    assert {k: remote[k] for k in ("corrupt_shards", "skipped_samples", "samples")} == \
        {k: local[k] for k in ("corrupt_shards", "skipped_samples", "samples")}
