"""Objects that would take a render worker down become one error record each, and their shard
completes with the other objects: a mesh that never finishes loading (``job.object_timeout_s``)
and a mesh over the size limits (``job.max_faces``, ``job.max_file_mb``). The shard task runs
in this process (no Ray), rendering through EGL."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import trimesh

from c2p.config.core import load_config
from c2p.config.render import RenderJobConfig
from c2p.corpora import open_corpus
from c2p.corpora.synthetic import SYNSET_IDS, write_synthetic
from c2p.shards.plan import make_plan
from c2p.shards.task import render_shard

SMALL = ["views.set=6", "views.image_size=32", "job.points=256", "job.progress=false", "job.shard_size=64"]


def _add_object(root: Path, name: str, mesh: trimesh.Trimesh) -> str:
    """One more chair in the ShapeNet layout (all.csv's train split); returns its uid."""
    synset = SYNSET_IDS["chair"]
    obj = root / synset / name / "models" / "model_normalized.obj"
    obj.parent.mkdir(parents=True)
    mesh.export(obj)
    with open(root / "all.csv", "a") as f:
        f.write(f"{9000 + len(name)},{synset},{synset},{name},train\n")
    return f"{synset}-{name}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, str, str]:
    root = write_synthetic(tmp_path_factory.mktemp("limits") / "syn", layout="shapenet", per_class=1, seed=0,
                           classes=["airplane", "box", "chair", "mug"])
    huge = _add_object(root, "zzhuge", trimesh.creation.icosphere(subdivisions=6))  # 81,920 triangles
    stuck = _add_object(root, "zzstuck", trimesh.creation.box())
    return root, huge, stuck


def _render(root: Path, out: Path, *extra: str):
    cfg = load_config(RenderJobConfig, None, ["corpus.name=synthetic", f"corpus.root={root}", f"out={out}", *SMALL, *extra])
    c = open_corpus("synthetic", str(root))
    refs, errors = c.list()
    plan = make_plan(cfg, refs, errors, c.labels)
    (spec,) = plan.shards
    out.mkdir(parents=True)
    return spec, render_shard(spec, cfg)


def test_a_mesh_that_never_finishes_loading_becomes_an_error_record(corpus, tmp_path, monkeypatch):
    import c2p.corpora.shapenet as shapenet

    root, huge, stuck = corpus
    real_load = shapenet.load_mesh_file

    def load(source, *args, **kwargs):
        if "zzstuck" in str(source):
            time.sleep(3600)  # a loader that hangs: a stalled file system, a parser in a loop
        return real_load(source, *args, **kwargs)

    monkeypatch.setattr(shapenet, "load_mesh_file", load)
    t0 = time.monotonic()
    spec, res = _render(root, tmp_path / "out", "job.object_timeout_s=3", "job.max_faces=0")
    assert time.monotonic() - t0 < 120
    errors = {e["uid"]: e for e in res.errors}
    assert set(errors) == {stuck}
    assert errors[stuck]["stage"] == "limit" and errors[stuck]["error"] == "Timeout" and "job.object_timeout_s" in errors[stuck]["reason"]
    assert res.samples == len(spec.refs) - 1  # the huge mesh renders when no size limit applies
    assert (tmp_path / "out" / spec.name).is_file()


def test_meshes_over_the_size_limits_become_error_records(corpus, tmp_path):
    root, huge, stuck = corpus
    spec, res = _render(root, tmp_path / "faces", "job.max_faces=50000")
    errors = {e["uid"]: e for e in res.errors}
    assert set(errors) == {huge} and errors[huge]["error"] == "TooLarge" and "81920 triangles" in errors[huge]["reason"]
    assert res.samples == len(spec.refs) - 1
    size_mb = (root / SYNSET_IDS["chair"] / "zzhuge" / "models" / "model_normalized.obj").stat().st_size / 2**20
    spec, res = _render(root, tmp_path / "bytes", f"job.max_file_mb={size_mb / 2:.4f}")
    errors = {e["uid"]: e for e in res.errors}
    assert set(errors) == {huge} and "job.max_file_mb" in errors[huge]["reason"]
    part = json.loads(next((tmp_path / "bytes" / "parts").glob("*.json")).read_text())
    assert part["samples"] == len(spec.refs) - 1
