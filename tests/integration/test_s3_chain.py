"""The whole chain against object storage (a real SeaweedFS on 127.0.0.1): render to a bucket
with Ray -> pre-train on 2 DeepSpeed ranks streaming the bucket's shards, checkpoints uploaded
(``checkpoint.remote``) -> the local run directory wiped -> resume from the bucket -> export ->
zero-shot evaluation of the exported tower read from its ``s3://`` address."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from test_pretrain import launch, read_metrics
from testdata import downstream_config

RENDER = ["corpus.name=synthetic", "views.set=6", "views.image_size=32", "job.points=256", "job.previews=0",
          "job.progress=false", "job.shard_size=2"]


def _train(shards: str, run_dir, remote: str, steps: int) -> list[str]:
    return [f"data.shards=[{shards}]", "data.imgfeat_tag=", "data.image_size=32", f"run.dir={run_dir}", "run.name=chain",
            "train.log_every=1", "train.batch_size=8", "train.deterministic=true", f"train.steps={steps}",
            "checkpoint.every=2", "checkpoint.keep=1", f"checkpoint.remote={remote}"]


def _rank0_log(run) -> str:
    """Rank 0's log file (the run's own record; its stderr also carries DeepSpeed's and tqdm's output)."""
    return (run / "logs" / "train_rank0.log").read_text()


def _tails(outs: list[str]) -> str:
    """The last lines of every rank's output, for an assertion message (pytest cuts long strings)."""
    return "\n".join(f"--- rank {r} ---\n" + "\n".join(o.splitlines()[-60:]) for r, o in enumerate(outs))


def _remote_tree(server, bucket: str, prefix: str) -> dict[str, str]:
    """``{key under prefix: sha256}`` of every object."""
    c, out = server.client(), {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            body = c.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            out[obj["Key"][len(prefix) + 1:]] = hashlib.sha256(body).hexdigest()
    return out


@pytest.mark.slow
def test_render_pretrain_checkpoint_wipe_resume_export_evaluate_in_a_bucket(s3_server, tmp_path, monkeypatch):
    import ray

    from c2p.config.core import load_config
    from c2p.config.render import RenderJobConfig
    from c2p.corpora.synthetic import write_synthetic
    from c2p.eval.towers import file_hash
    from c2p.eval.zeroshot import evaluate_zeroshot
    from c2p.preflight import check_encoder
    from c2p.shards import run_render_job
    from c2p.storage.cache import CACHE_ENV

    monkeypatch.setenv("C2P_STAGE_DIR", str(tmp_path / "stage"))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "objects"))
    root = write_synthetic(tmp_path / "corpus", layout="shapenet", per_class=3, seed=0, classes=["box", "chair", "mug"],
                           test_per_class=2)
    shards = s3_server.bucket("c2p-chain") + "/shards"
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        rendered = run_render_job(load_config(RenderJobConfig, None, RENDER + [f"corpus.root={root}", f"out={shards}"]))
    finally:
        ray.shutdown()
    assert rendered["samples"] == 9

    # 1. 4 steps on 2 ranks, a tag every 2 steps, keep 1: the bucket holds step 4 only, and the export
    remote = "s3://c2p-chain/runs/chain"
    run = tmp_path / "runs" / "chain"
    outs = launch(2, _train(shards, tmp_path / "runs", remote, 4))
    assert "uploaded step_00000004 to s3://c2p-chain/runs/chain" in _rank0_log(run), _tails(outs)
    tree = _remote_tree(s3_server, "c2p-chain", "runs/chain")
    assert {k.split("/")[0] for k in tree} == {"step_00000004", "latest", "export"}  # step 2: pruned remotely (keep 1)
    local_tag = run / "checkpoints" / "step_00000004"
    marker = json.loads((local_tag / "c2p_commit.json").read_text())
    assert {k.split("/", 1)[1] for k in tree if k.startswith("step_")} == set(marker["files"]) | {"c2p_commit.json"}
    assert all(tree[f"step_00000004/{rel}"] == f["sha256"] for rel, f in marker["files"].items())
    first = read_metrics(run)

    # 2. the node is wiped; the same command trained on to step 6 resumes from the bucket
    shutil.rmtree(run)
    outs = launch(2, _train(shards, tmp_path / "runs", remote, 6))
    log = _rank0_log(run)
    assert "downloaded step_00000004 from s3://c2p-chain/runs/chain" in log and "resumed from step 4" in log, _tails(outs)
    again = read_metrics(run)
    assert [r["step"] for r in again] == [5, 6] and all(r["loss"] == r["loss"] for r in again)
    assert again[-1]["samples"] == 6 * 8 and first[-1]["samples"] == 4 * 8
    assert sum(r["corrupt_shards"] for r in first + again) == 0
    tree = _remote_tree(s3_server, "c2p-chain", "runs/chain")
    assert {k.split("/")[0] for k in tree} == {"step_00000006", "latest", "export"}
    assert s3_server.client().get_object(Bucket="c2p-chain", Key="runs/chain/latest")["Body"].read() == b"step_00000006"
    local_export = run / "export" / "depth_tower.safetensors"
    assert tree["export/depth_tower.safetensors"] == hashlib.sha256(local_export.read_bytes()).hexdigest()

    # 3. zero-shot evaluation reads the tower from its address (a cached download, loaded weights-only)
    cfg = downstream_config(tmp_path, root, "synthetic", "encoder.model=c2p-tiny", "encoder.views=6", "data.points=256",
                            "encoder.radius=0.04", f"encoder.depth_tower={remote}/export/depth_tower.safetensors")
    check_encoder(cfg.encoder)
    res = evaluate_zeroshot(cfg)
    assert res["encoder"] == "depth_tower" and res["metrics"]["n"] == 6
    assert res["checkpoint_hash"] == file_hash(local_export)
    assert (tmp_path / "objects" / "c2p-chain" / "runs" / "chain" / "export" / "depth_tower.safetensors").is_file()
