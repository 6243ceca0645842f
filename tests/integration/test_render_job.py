"""c2p.shards: the Ray render job and its guarantees.

One real local Ray cluster (2 CPUs) is shared by the module. The corpus is the synthetic one
in ShapeNet layout with broken inputs mixed in: an empty file, garbage bytes, NaN vertices,
a directory where the mesh file should be, and an object whose texture image is missing
(that one is *good*: the reader falls back to the material colour).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from testdata import BROKEN_CLASSES as CLASSES
from testdata import BROKEN_LISTING, BROKEN_LOAD, write_broken_shapenet

from c2p.config.core import load_config
from c2p.config.render import RenderJobConfig
from c2p.corpora import open_corpus
from c2p.corpora.synthetic import SYNSET_IDS
from c2p.schema import (
    ERRORS_NAME,
    INDEX_NAME,
    SampleMeta,
    ShardIndex,
    decode_image,
    decode_npy,
)
from c2p.shards import PlanMismatch
from c2p.shards.plan import make_plan

REPO = Path(__file__).resolve().parents[2]
# Small renders keep the module within its time budget on 2 shared cores.
SMALL = ["views.set=6", "views.image_size=32", "job.points=512", "views.depth_png=true", "job.previews=4",
         "job.progress=false", "job.shard_size=2"]
# Shards (of 2, in the plan's keyed order): [lamp, airplane] [table, sphere] [chair/zznanverts, chair]
# [mug, cone] [box, chair/zzgarbage]: the shard whose task is killed also holds a broken object.
FAULT_SHARD = 2


def _cfg(root: Path, out: Path, *extra: str) -> RenderJobConfig:
    return load_config(RenderJobConfig, None, [f"corpus.root={root}", f"out={out}", "corpus.name=synthetic", *SMALL, *extra])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hashes(out: Path) -> dict[str, str]:
    """Hashes of everything that must be reproducible: the tars, index.json and errors.jsonl."""
    names = sorted(p.name for p in out.glob("shard-*.tar")) + [INDEX_NAME, ERRORS_NAME]
    return {n: _sha(out / n) for n in names}


def _member_diff(a: Path, b: Path) -> list[str]:
    """Tar members whose bytes differ between two renders (for a readable failure)."""
    diff = []
    for pa in sorted(a.glob("shard-*.tar")):
        ma = {f"{k}.{s}": hashlib.sha256(v).hexdigest() for k, d in _tar_samples(pa).items() for s, v in d.items()}
        mb = {f"{k}.{s}": hashlib.sha256(v).hexdigest() for k, d in _tar_samples(b / pa.name).items() for s, v in d.items()}
        diff += [f"{pa.name}:{n}" for n in sorted(set(ma) | set(mb)) if ma.get(n) != mb.get(n)]
    return diff


def _tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for info in tar:
            key, _, suffix = info.name.partition(".")
            samples.setdefault(key, {})[suffix] = tar.extractfile(info).read()
    return samples


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_broken_shapenet(tmp_path_factory.mktemp("corpus") / "syn")


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def rendered(corpus, ray_cluster, tmp_path_factory):
    """The reference render, with the task of shard FAULT_SHARD killed (os._exit) on its first attempt."""
    from c2p.shards.job import run_render_job

    out = tmp_path_factory.mktemp("ref") / "shards"
    marker = out.parent / "fault-marker"
    os.environ["C2P_FAULT_INJECT"] = f"shard={FAULT_SHARD},after=1,marker={marker}"
    try:
        summary = run_render_job(_cfg(corpus, out))
    finally:
        del os.environ["C2P_FAULT_INJECT"]
    return out, summary, marker


# ----------------------------------------------------------------------------- plan (no Ray)


def test_render_shard_is_byte_identical_across_attempts(corpus, tmp_path):
    """The task body alone (no Ray): the same shard rendered twice gives the same tar bytes."""
    from c2p.shards.task import render_shard

    cfg = _cfg(corpus, tmp_path / "a")
    c = open_corpus("synthetic", corpus)
    refs, errors = c.list()
    plan = make_plan(cfg, refs, errors, c.labels)
    spec = plan.shards[0]
    hashes = []
    # a and b: the default (samples encoded and written by the task's writer thread); c: in line.
    for out, threaded in ((tmp_path / "a", True), (tmp_path / "b", True), (tmp_path / "c", False)):
        out.mkdir()
        res = render_shard(spec, replace(cfg, out=str(out), job=replace(cfg.job, write_thread=threaded)))
        assert res.samples == len(spec.refs) - len(res.errors) > 0
        hashes.append(_sha(out / spec.name))
        assert (out / "parts" / (Path(spec.name).stem + ".json")).exists()
    assert hashes[0] == hashes[1] == hashes[2]
    assert (tmp_path / "a" / "parts" / "shard-000000.json").read_bytes() == (tmp_path / "c" / "parts" / "shard-000000.json").read_bytes()


def test_writer_thread_error_fails_the_shard_and_leaves_nothing(corpus, tmp_path, monkeypatch):
    """A write error in the writer thread (a full disk) reaches the task: no shard, no parts record, no staging."""
    from c2p.schema import ShardWriter
    from c2p.shards.task import render_shard

    cfg = _cfg(corpus, tmp_path / "out")
    c = open_corpus("synthetic", corpus)
    refs, errors = c.list()
    plan = make_plan(cfg, refs, errors, c.labels)
    spec = next(s for s in plan.shards if not any("-zz" in r.uid for r in s.refs))  # two good objects: the second write fails
    real_write = ShardWriter.write

    def failing_write(self, sample):
        if self.count >= 1:
            raise OSError(28, "No space left on device (injected)")
        return real_write(self, sample)

    monkeypatch.setattr(ShardWriter, "write", failing_write)
    (tmp_path / "out").mkdir()
    with pytest.raises(OSError, match="No space left"):
        render_shard(spec, cfg)
    assert not (tmp_path / "out" / spec.name).exists()
    assert not list((tmp_path / "out").glob("parts/*")) and not list((tmp_path / "out").rglob("*.tmp"))
    assert not list((tmp_path / "out").glob(".staging/*"))


# ----------------------------------------------------------------------------- the Ray job


@pytest.mark.slow
def test_job_output_reads_back_everywhere(rendered, corpus):
    out, summary, marker = rendered
    c = open_corpus("synthetic", corpus)
    good = {r.uid for r in c.list()[0]} - {f"{SYNSET_IDS['chair']}-zz{n}" for n in BROKEN_LOAD}
    assert len(good) == len(CLASSES)

    # The task of shard FAULT_SHARD died on its first attempt (the marker proves it) and was retried.
    assert marker.is_file()
    assert summary["shards_failed"] == [] and summary["shards_rendered"] == summary["shards"] == 5
    assert not list(out.rglob("*.tmp")) and not list(out.glob(".staging/*"))

    index = ShardIndex.load(out)
    tars = sorted(out.glob("shard-*.tar"))
    assert [p.name for p in tars] == sorted(index.shards)
    assert index.num_samples == summary["samples"] == len(good)
    assert index.total_bytes == sum(p.stat().st_size for p in tars) == summary["bytes"]

    # tar tf: standard tar lists every member, and the counts agree with index.json.
    for p in tars:
        names = subprocess.run(["tar", "tf", str(p)], check=True, capture_output=True, text=True).stdout.split()
        assert len({n.split(".", 1)[0] for n in names}) == index.shards[p.name]
        assert all(n.split(".", 1)[1] in {"points.npy", "meta.json", "txt"} or n.split(".", 1)[1].startswith(("rgb.", "depth."))
                   for n in names)

    # plain webdataset: every good object exactly once, with the schema's members.
    import webdataset as wds

    keys = []
    for sample in wds.WebDataset([str(p) for p in tars], shardshuffle=False):
        keys.append(sample["__key__"])
        meta = SampleMeta.from_json(sample["meta.json"])
        points = decode_npy(sample["points.npy"])
        assert points.dtype == np.float16 and points.shape == (512, 3)
        assert np.abs(np.linalg.norm(points.astype(np.float32), axis=1).max() - 1.0) < 1e-2
        assert len(meta.views) == 6 and meta.points == 512 and meta.label in CLASSES
        rgb = decode_image(sample["rgb.0.png"])
        assert rgb.shape == (32, 32, 3) and rgb.min() < 250 and rgb.max() == 255  # object on white
        assert decode_image(sample["depth.0.png"]).dtype == np.uint16
        assert sample["txt"].decode() == meta.caption != ""
    assert sorted(keys) == sorted(f"synthetic-{u}" for u in good)

    # Every broken object is in errors.jsonl with its path and a reason.
    errors = [json.loads(line) for line in (out / ERRORS_NAME).read_text().splitlines()]
    by_uid = {e["uid"]: e for e in errors}
    for name, reason in BROKEN_LISTING.items():
        e = by_uid[f"{SYNSET_IDS['chair']}-zz{name}"]
        assert e["stage"] == "list" and reason in e["reason"] and e["source"].endswith("model_normalized.obj")
    for name in BROKEN_LOAD:
        e = by_uid[f"{SYNSET_IDS['chair']}-zz{name}"]
        assert e["stage"] in ("load", "points", "render") and e["reason"] and Path(e["source"]).name == "model_normalized.obj"
    assert len(errors) == summary["errors"] == index.total_errors == 4
    assert sum(summary["errors_by_reason"].values()) == 4
    # The object whose texture image is missing is a sample, drawn in its material colour, and
    # that fallback is reported with its path.
    warnings = [json.loads(line) for line in (out / "warnings.jsonl").read_text().splitlines()]
    untextured = next(w for w in warnings if "texture" in w["reason"])
    assert f"synthetic-{untextured['uid']}" in keys and untextured["source"].endswith("model_normalized.obj")
    assert summary["warnings"] == len(warnings) >= 1
    assert list((out / "previews").glob("*.png"))


@pytest.mark.slow
def test_ray_data_reads_the_shards(rendered):
    import ray.data

    out, summary, _ = rendered
    rows = ray.data.read_webdataset(ShardIndex.load(out).shard_paths(out)).take_all()
    assert len(rows) == summary["samples"]
    assert len({r["__key__"] for r in rows}) == len(rows)
    assert all(r["points.npy"].shape == (512, 3) and r["rgb.5.png"].shape == (32, 32, 3) for r in rows)


@pytest.mark.slow
def test_killed_driver_resumes_missing_shards_byte_identical(rendered, corpus, ray_cluster, tmp_path):
    ref_out, ref_summary, _ = rendered
    out = tmp_path / "shards"
    # One shard at a time so the driver is surely killed mid-run (max_in_flight is not a render setting).
    cmd = [sys.executable, str(REPO / "launch" / "render.py"), "--corpus", "synthetic", "--root", str(corpus), "--out", str(out),
           "--address", ray_cluster, *SMALL, "max_in_flight=1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("parts/shard-*.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"driver ended before it could be killed:\n{proc.stdout.read().decode()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done_before = len(list(out.glob("parts/shard-*.json")))
    assert 1 <= done_before < ref_summary["shards"]

    # Re-run through the same entry point: only the missing shards are rendered.
    run = subprocess.run(cmd[:-1] + ["--json"], env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["shards_skipped"] >= done_before
    assert summary["shards_skipped"] + summary["shards_rendered"] == ref_summary["shards"]
    assert summary["shards_rendered"] >= 1
    assert not list(out.rglob("*.tmp")) and not list(out.glob(".staging/*"))
    assert _hashes(out) == _hashes(ref_out), _member_diff(out, ref_out)


@pytest.mark.slow
def test_shard_failing_all_retries_is_reported_and_rerun(corpus, ray_cluster, tmp_path, monkeypatch):
    from c2p.shards.job import run_render_job

    out = tmp_path / "shards"
    args = ("corpus.limit=2", "job.shard_size=1", "job.previews=0")
    monkeypatch.setenv("C2P_FAULT_INJECT", f"shard=0,after=1,marker={tmp_path / 'marker'}")
    first = run_render_job(_cfg(corpus, out, *args, "job.max_retries=0"))
    assert [f["shard"] for f in first["shards_failed"]] == ["shard-000000.tar"] and first["shards_rendered"] == 1
    assert list(ShardIndex.load(out).shards) == ["shard-000001.tar"]  # the index lists complete shards only
    assert not (out / "shard-000000.tar").exists()
    second = run_render_job(_cfg(corpus, out, *args))  # the marker exists: this attempt lives
    assert second["shards_failed"] == [] and second["shards_rendered"] == 1 and second["shards_skipped"] == 1
    assert ShardIndex.load(out).num_samples == 2


@pytest.mark.slow
def test_settings_change_is_refused_unless_overwrite(corpus, ray_cluster, tmp_path):
    from c2p.shards.job import run_render_job

    out = tmp_path / "shards"
    first = run_render_job(_cfg(corpus, out, "corpus.limit=2", "job.previews=0"))
    assert first["samples"] == 2 and first["shards_rendered"] == 1
    before = _hashes(out)
    again = run_render_job(_cfg(corpus, out, "corpus.limit=2", "job.previews=0"))
    assert again["shards_skipped"] == 1 and again["shards_rendered"] == 0 and _hashes(out) == before

    with pytest.raises(PlanMismatch, match="views.image_size"):
        run_render_job(_cfg(corpus, out, "corpus.limit=2", "job.previews=0", "views.image_size=24"))
    assert _hashes(out) == before  # nothing touched
    redone = run_render_job(_cfg(corpus, out, "corpus.limit=2", "job.previews=0", "views.image_size=24", "job.overwrite=true"))
    assert redone["shards_rendered"] == 1
    assert ShardIndex.load(out).settings["views"]["image_size"] == 24
    sample = next(iter(_tar_samples(out / "shard-000000.tar").values()))
    assert decode_image(sample["rgb.0.png"]).shape == (24, 24, 3)


@pytest.mark.slow
def test_imgfeat_actors_store_image_tower_features(corpus, ray_cluster, tmp_path):
    import ray

    from c2p.shards.features import create_feature_actors
    from c2p.shards.job import run_render_job

    out = tmp_path / "shards"
    # The first 2 objects of the plan's order: lamp, airplane.
    summary = run_render_job(_cfg(corpus, out, "corpus.limit=2", "job.previews=0", "imgfeat.model=c2p-tiny"))
    assert summary["samples"] == 2
    # The reference encoder runs in its own process too: this one holds an EGL context (Mesa's
    # LLVM), which open_clip's import of triton (a second LLVM) would crash.
    (encoder,) = create_feature_actors("c2p-tiny", "", count=1, num_gpus=0, batch_size=64, seed=0)
    count = 0
    for p in sorted(out.glob("shard-*.tar")):
        for sample in _tar_samples(p).values():
            feats = decode_npy(sample["imgfeat.c2p-tiny.npy"])
            assert feats.dtype == np.float16 and feats.shape == (6, 64)
            rgb = np.stack([decode_image(sample[f"rgb.{v}.png"]) for v in range(6)])
            expected = ray.get(encoder.encode.remote(rgb)).astype(np.float32)
            np.testing.assert_allclose(feats.astype(np.float32), expected, atol=2e-2, rtol=1e-2)
            count += 1
    assert count == 2
    ray.kill(encoder)




@pytest.mark.slow
def test_second_driver_on_a_live_out_is_refused_naming_the_first(corpus, ray_cluster, tmp_path):
    from c2p.lease import LEASE_NAME

    out = tmp_path / "shards"
    cmd = [sys.executable, str(REPO / "launch" / "render.py"), "--corpus", "synthetic", "--root", str(corpus), "--out", str(out),
           "--address", ray_cluster, *SMALL]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / LEASE_NAME).exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(first.pid, signal.SIGSTOP)  # a slow or hung driver still owns its output
        assert (out / LEASE_NAME).exists(), f"first driver holds no lease:\n{first.communicate()[1].decode()[-2000:]}"
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"render output {out} is in use by owner uuid-" in second.stderr and f"pid {first.pid}, since" in second.stderr
        os.kill(first.pid, signal.SIGCONT)
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err.decode()[-3000:]  # the first driver was not disturbed
        assert ShardIndex.load(out).num_samples > 0 and not (out / LEASE_NAME).exists()  # released at its end
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGCONT)
            os.killpg(first.pid, signal.SIGKILL)
