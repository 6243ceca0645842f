"""Pre-training loop, DeepSpeed engine, schedules and metrics (c2p.train).

Multi-rank runs are real: N processes of ``python -m c2p.train.pretrain`` with RANK/WORLD_SIZE/
MASTER_* set, DeepSpeed over gloo on CPU, the c2p-tiny CLIP (32 px), a few steps each. Each
run serves several checks (metrics, export, DeepSpeed's zero_to_fp32) to keep the file fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from testdata import object_sample, write_shard_dir

from c2p.cluster.env import free_port

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "pretrain" / "tiny.yaml"
IMGFEAT_TAG = "tiny"
EMBED_DIM = 64  # c2p-tiny's joint embedding


# ----------------------------------------------------------------------------- fixtures / helpers


def write_blob_shards(out: Path, n_objects: int = 32, n_shards: int = 4, points: int = 256, seed: int = 0) -> Path:
    """Synthetic-like shards: each object is a union of 3 random Gaussian blobs (its own depth
    silhouette), with one view (0°, 0°, d=1), a flat-colour RGB render and a random fixed image
    feature (``imgfeat.tiny``): learning to
    retrieve an object's image feature from its depth maps is possible and checkable."""
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n_objects, EMBED_DIM)).astype(np.float32)

    def blob(i: int) -> dict:
        centres, scales = rng.uniform(-0.6, 0.6, (3, 3)), rng.uniform(0.05, 0.3, (3, 3))
        k = rng.integers(0, 3, points)
        p = centres[k] + rng.standard_normal((points, 3)) * scales[k]
        p /= np.linalg.norm(p, axis=1).max()
        rgb = np.broadcast_to(rng.integers(0, 256, (1, 1, 3), dtype=np.uint8), (32, 32, 3))
        return object_sample("blobs", f"o{i:04d}", f"c{i % 4}", i % 4, p, views=[[0.0, 0.0, 1.0]], rgb=[rgb],
                             imgfeat={IMGFEAT_TAG: feats[i][None]})

    shards = [[blob(i) for i in range(s, n_objects, n_shards)] for s in range(n_shards)]
    return write_shard_dir(out, shards, corpus="blobs", labels=[f"c{j}" for j in range(4)])


@pytest.fixture(scope="session")
def blob_shards(tmp_path_factory) -> Path:
    return write_blob_shards(tmp_path_factory.mktemp("shards") / "blobs")


def base_overrides(shards: Path, run_dir: Path, name: str, imgfeat: bool = True) -> list[str]:
    return [f"data.shards=[{shards}]", f"data.imgfeat_tag={IMGFEAT_TAG if imgfeat else ''}", f"run.dir={run_dir}", f"run.name={name}",
            "train.log_every=1"]


def launch(world: int, overrides: list[str], *, env: dict | None = None, timeout: float = 240,
           expect_rc: dict[int, int] | None = None) -> list[str]:
    """Run ``world`` ranks of ``python -m c2p.train.pretrain --config tiny.yaml overrides``; return their outputs.

    ``expect_rc``: rank -> expected exit code (default 0 for all). When a rank exits with a
    non-zero code the others may wait in a collective forever: they are killed after a grace period.
    """
    port = str(free_port())
    procs = []
    for rank in range(world):
        penv = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                    MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1",
                    PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(env or {}))
        procs.append(subprocess.Popen([sys.executable, "-m", "c2p.train.pretrain", "--config", str(TINY), *overrides],
                                      env=penv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO))
    deadline, failed_at = time.time() + timeout, None
    while any(p.poll() is None for p in procs) and time.time() < deadline:
        if failed_at is None and any(p.poll() not in (None, 0) for p in procs):
            failed_at = time.time()
        if failed_at is not None and time.time() - failed_at > 20:
            break
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.kill()
    outs = [p.communicate()[0] for p in procs]
    expect_rc = expect_rc or {r: 0 for r in range(world)}
    for rank, rc in expect_rc.items():
        assert procs[rank].returncode == rc, f"rank {rank} exited {procs[rank].returncode}, expected {rc}:\n{outs[rank][-4000:]}"
    return outs


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def check_export_matches_engine(run: Path) -> None:
    """The exported tower, loaded into a plain open_clip visual tower, gives the engine's probe features."""
    from safetensors.torch import load_file

    from c2p.models.clip import create_clip

    info = json.loads((run / "export" / "depth_tower.json").read_text())
    visual = create_clip(info["model"]).visual.eval()
    visual.load_state_dict(load_file(run / "export" / "depth_tower.safetensors"))
    probe = load_file(run / "export" / "probe.safetensors")
    with torch.no_grad():
        feats = visual(probe["images"])
    torch.testing.assert_close(feats, probe["features"], rtol=1e-4, atol=1e-5)


def universal_state(tag_dir: Path, out: Path | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Per-parameter consolidated fp32 weights and Adam moments, via DeepSpeed's universal
    converter (``out=None``: ``tag_dir`` is already in universal format)."""
    out = out or tag_dir
    if not (out / "zero").is_dir():
        r = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(tag_dir),
                            "--output_folder", str(out), "--inject_missing_state", "--num_extract_workers", "1",
                            "--num_merge_workers", "1"], capture_output=True, text=True,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert r.returncode == 0, r.stderr[-3000:]
    state = {}
    for p in sorted((out / "zero").iterdir()):
        if p.is_dir():
            loaded = {k: torch.load(p / f"{k}.pt", map_location="cpu", weights_only=True)
                      for k in ("fp32", "exp_avg", "exp_avg_sq")}
            # ZeRO-1/2 conversions store {"param": tensor}; ZeRO-3 ones the bare tensor
            state[p.name] = {k: v["param"] if isinstance(v, dict) else v for k, v in loaded.items()}
    return state


def assert_same_state(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b) and a
    for name in a:
        for k in ("fp32", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(a[name][k], b[name][k], rtol=0, atol=0, msg=f"{name}.{k}")


# ----------------------------------------------------------------------------- pure functions


# ----------------------------------------------------------------------------- real runs


@pytest.mark.slow
def test_loss_goes_down_and_retrieval_rises_above_chance(tmp_path, blob_shards):
    """One rank, 8 objects per batch (chance top-1 = 1/8), 80 steps on the blob corpus."""
    run = tmp_path / "learn"
    out = launch(1, base_overrides(blob_shards, tmp_path, "learn") + [
        "train.steps=80", "train.batch_size=8", "optim.name=adamw", "optim.lr=2e-3", "schedule.name=constant",
        "checkpoint.every=1000", "checkpoint.export=false"])[0]
    assert "fresh start" in out
    m = read_metrics(run)
    assert [r["step"] for r in m] == list(range(1, 81))
    first, last = m[:10], m[-10:]
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
    assert mean(last, "loss") < 0.6 * mean(first, "loss"), (mean(first, "loss"), mean(last, "loss"))
    assert mean(first, "retrieval_top1") < 0.3
    assert mean(last, "retrieval_top1") >= 0.5, [r["retrieval_top1"] for r in last]  # chance: 0.125
    for key in ("loss", "loss_cross", "loss_intra", "w", "lr", "samples_per_s", "data_wait_frac", "retrieval_top1",
                "batch_classes", "skipped_samples", "corrupt_shards"):
        assert key in m[-1], key
    assert 0.0 <= m[-1]["data_wait_frac"] <= 1.0 and m[-1]["skipped_samples"] == 0
    # distinct labels in the 8-object batches of a 4-class corpus whose shards mix the classes
    assert all(1.0 <= r["batch_classes"] <= 4.0 for r in m) and mean(m, "batch_classes") > 2.5
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "config.yaml").is_file() and (run / "logs" / "train_rank0.log").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 1, 3])
def test_zero_stage_trains_on_two_ranks(tmp_path, blob_shards, stage):
    """ZeRO-0/1/3 on 2 gloo ranks (stage 2 runs in test_checkpoint.py). Same run: the export
    equals the engine's features, DeepSpeed's own zero_to_fp32 reads our tag; stage 1 also
    runs gradient accumulation and activation checkpointing; stage 0 reads RGB images and runs
    the frozen image tower instead of precomputed features."""
    name = f"z{stage}"
    extra = ["train.grad_accum=2", "model.grad_checkpointing=true"] if stage == 1 else []
    launch(2, base_overrides(blob_shards, tmp_path, name, imgfeat=stage != 0) + [
        f"train.zero_stage={stage}", "train.steps=4", "checkpoint.every=2", "checkpoint.keep=1", *extra])
    run = tmp_path / name
    m = read_metrics(run)
    assert [r["step"] for r in m] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in m)
    assert m[-1]["samples"] == 4 * 16
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000004"]  # keep=1 pruned step 2
    assert (ckpts / "latest").read_text() == "step_00000004"
    commit = json.loads((ckpts / "step_00000004" / "c2p_commit.json").read_text())
    assert (commit["world_size"], commit["zero_stage"], commit["step"]) == (2, stage, 4)
    check_export_matches_engine(run)
    if stage == 1:  # the engine-free export (the export command's job) gives the same tensors
        from safetensors.torch import load_file

        from c2p.train.export import export_job

        again = export_job({"run_dir": str(run), "tag": None, "out": str(tmp_path / "again")})
        a, b = load_file(again), load_file(run / "export" / "depth_tower.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert json.loads((tmp_path / "again" / "depth_tower.json").read_text())["step"] == 4
    if stage == 3:  # ZeRO-3 at another world size: 2 -> 1 rank through the universal format
        from c2p.train import checkpoint as ck

        out = launch(1, base_overrides(blob_shards, tmp_path, name) + ["train.zero_stage=3", "train.steps=6",
                                                                       "checkpoint.export=false"],
                     env={ck.DUMP_ENV: str(tmp_path / "dump")})[0]
        assert "resumed from step 4" in out and "universal format" in out
        assert_same_state(universal_state(ckpts / "step_00000004_universal"),
                          universal_state(tmp_path / "dump" / "loaded", tmp_path / "u_loaded"))
        assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5, 6]
    if stage >= 1:  # DeepSpeed's recovery script, as a user would run it, on our tag
        out = tmp_path / "fp32"
        r = subprocess.run([sys.executable, str(ckpts / "zero_to_fp32.py"), str(ckpts), str(out), "-t", "step_00000004"],
                           capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert r.returncode == 0, r.stderr[-3000:]
        sd = torch.load(out / "pytorch_model.bin", map_location="cpu", weights_only=True)
        from safetensors.torch import load_file

        tower = load_file(run / "export" / "depth_tower.safetensors")
        for k, v in tower.items():
            torch.testing.assert_close(sd["depth.visual." + k].float(), v)


def test_metrics_carry_throughput_mfu_data_wait_and_checkpoint_stall(tmp_path, blob_shards):
    """2 gloo ranks, 4 steps, a checkpoint at step 2: every record has the throughput fields with
    plausible values, the FLOPs per sample are c2p-tiny's hand count, and the end-of-run summary
    is in the log and the result."""
    from testdata import vit_forward_flops

    from c2p.models.clip import TINY_CONFIGS

    out = launch(2, base_overrides(blob_shards, tmp_path, "tp") + [
        "train.steps=4", "checkpoint.every=2", "checkpoint.export=false"])[0]
    m = read_metrics(tmp_path / "tp")
    assert [r["step"] for r in m] == [1, 2, 3, 4]
    v = TINY_CONFIGS["c2p-tiny"]["vision_cfg"]
    fwd = vit_forward_flops(v["image_size"], v["patch_size"], v["width"], v["layers"], TINY_CONFIGS["c2p-tiny"]["embed_dim"])
    for r in m:
        assert r["flops_per_sample"] > 2 * fwd * 2.85  # depth tower fwd + bwd on 2 views; imgfeat: no image tower
        assert r["flops_per_sample"] < 2 * fwd * 3
        assert 0 < r["mfu"] <= 1 and r["peak_tflops"] > 0
        assert r["mfu"] == pytest.approx(r["samples_per_s_rank"] * r["flops_per_sample"] / (r["peak_tflops"] * 1e12))
        assert r["samples_per_s"] == pytest.approx(2 * r["samples_per_s_rank"]) and r["samples_per_s"] > 0
        assert 0 <= r["data_wait_frac"] < 1 and r["ckpt_stall_s"] >= 0
    assert m[2]["ckpt_stall_s"] > 0.01  # step 3's interval holds the save of step 2
    assert m[2]["ckpt_stall_s"] > 10 * max(m[0]["ckpt_stall_s"], m[1]["ckpt_stall_s"])
    assert "MFU" in out and "ckpt-stall" in out  # the progress line
    line = next(x for x in out.splitlines() if "throughput:" in x)
    assert "samples/s" in line and "MFU" in line and "data wait" in line and "checkpoint stall" in line
    summary = json.loads(out.strip().splitlines()[-1])["throughput"]
    assert summary["steps"] == 4 and 0 < summary["mfu"] <= 1 and summary["ckpt_stall_s"] > m[2]["ckpt_stall_s"]
    assert summary["flops"]["depth_forward"] == 2 * fwd and summary["flops"]["image_forward"] == 0
