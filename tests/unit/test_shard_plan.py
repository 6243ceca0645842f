"""c2p.shards without Ray or GL: the deterministic plan and its fingerprint, keys and object
seeds, fault specs, the PNG encoder, config refusals, and previews from stored shards.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from testdata import object_sample, write_broken_shapenet, write_shard_dir

from c2p.config.core import ConfigError, load_config
from c2p.config.render import RenderJobConfig
from c2p.corpora import ObjectRef
from c2p.schema import (
    ShardIndex,
    decode_image,
)
from c2p.shards.plan import (
    cut_shards,
    make_plan,
    object_seed,
    render_settings,
    unique_refs,
)
from c2p.shards.record import read_plan_record, write_plan_record

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_broken_shapenet(tmp_path_factory.mktemp("corpus") / "syn")


# ----------------------------------------------------------------------------- plan (no Ray)


def _refs(n: int) -> list[ObjectRef]:
    return [ObjectRef("c", f"u{i:03d}", "a", 0, f"/src/{i}") for i in range(n)]


def test_plan_is_deterministic_and_covers_every_object_once(tmp_path):
    cfg = load_config(RenderJobConfig, None, [f"corpus.root={tmp_path}", f"out={tmp_path}/o", "job.shard_size=4"])
    refs = _refs(10)
    shuffled = [refs[i] for i in np.random.default_rng(0).permutation(10)]
    a, b = make_plan(cfg, refs, [], ["a"]), make_plan(cfg, shuffled, [], ["a"])
    assert a.fingerprint == b.fingerprint
    assert [[r.uid for r in s.refs] for s in a.shards] == [[r.uid for r in s.refs] for s in b.shards]
    assert [len(s.refs) for s in a.shards] == [4, 4, 2]
    assert [s.name for s in a.shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert sorted(r.uid for s in a.shards for r in s.refs) == [r.uid for r in refs]
    assert [r.uid for s in a.shards for r in s.refs] != [r.uid for r in refs]  # not cut in uid order
    # A new object moves others to other shards: another plan.
    assert make_plan(cfg, refs + _refs(11)[10:], [], ["a"]).fingerprint != a.fingerprint


def test_every_shard_is_a_fair_sample_of_a_class_sorted_corpus(tmp_path):
    """A real 12-class listing (uids cluster by class, as ShapeNet's do) in shards of 16: every
    shard holds at least half of the classes (cut in uid order, each held one or two)."""
    from c2p.corpora import open_corpus
    from c2p.corpora.synthetic import SYNTHETIC_CLASSES, write_synthetic

    root = write_synthetic(tmp_path / "w", layout="shapenet", per_class=16, seed=0, classes=SYNTHETIC_CLASSES[:12])
    corpus = open_corpus("synthetic", str(root), split="train")
    refs, errors = corpus.list()
    labels = sorted({r.label for r in refs})
    assert len(labels) == 12 and not errors
    cfg = load_config(RenderJobConfig, None, [f"corpus.root={root}", f"out={tmp_path}/o", "job.shard_size=16"])
    plan = make_plan(cfg, refs, errors, labels)
    per_shard = [len({r.label for r in s.refs}) for s in plan.shards]
    assert min(per_shard) >= 6, per_shard
    by_uid = sorted(refs, key=lambda r: r.uid)  # what cutting in uid order gave, for contrast
    assert max(len({r.label for r in by_uid[i:i + 16]}) for i in range(0, len(by_uid), 16)) <= 2
    # a limit keeps a fair sample too, not the first classes by uid
    small = make_plan(load_config(RenderJobConfig, None, [f"corpus.root={root}", f"out={tmp_path}/o", "job.shard_size=16", "corpus.limit=32"]),
                      refs, errors, labels)
    assert small.total_objects == 32 and len({r.label for s in small.shards for r in s.refs}) >= 10


def _grow_cfg(tmp_path, *extra):
    return load_config(RenderJobConfig, None, [f"corpus.root={tmp_path}", f"out={tmp_path}/o", "job.shard_size=4", *extra])


def _layout(plan) -> list[list[str]]:
    return [[r.uid for r in s.refs] for s in plan.shards]


def test_a_grown_listing_keeps_every_planned_shard_and_adds_new_ones(tmp_path):
    """Generation 0 from 10 objects of class a; the listing grows by 6 objects (a new class b)
    and loses one: the recorded shards keep their objects and places, only the new objects go
    into new shards, in keyed order, and labels are appended so old label indices hold."""
    cfg, out = _grow_cfg(tmp_path), tmp_path / "o"
    first = make_plan(cfg, _refs(10), [], ["a"], created="2026-01-01T00:00:00+00:00")
    out.mkdir()
    write_plan_record(out, first)
    assert (out / "generations" / "gen-0000.uids").read_text().split() == [u for s in _layout(first) for u in s]

    grown = [r for r in _refs(10) if r.uid != "u003"] + [ObjectRef("c", f"v{i:03d}", "b", 0, f"/src/v{i}") for i in range(6)]
    previous = read_plan_record(out)
    plan = make_plan(cfg, grown, [], ["b"], previous)  # the corpus alone would number b as 0
    assert plan.labels == ["a", "b"]
    old = [[u for u in s if u != "u003"] for s in _layout(first)]
    assert _layout(plan)[: len(old)] == old
    assert [s.fingerprint for s in plan.shards[: len(old)]] == [s.fingerprint for s in first.shards]
    lost = next(s for s in plan.shards if s.missing)
    assert lost.missing == ("u003",) and plan.vanished == ["u003"]
    new = plan.shards[len(old):]
    assert [s.index for s in new] == [3, 4] and {s.generation for s in new} == {1}
    assert sorted(r.uid for s in new for r in s.refs) == [f"v{i:03d}" for i in range(6)]
    assert all(r.label_index == 1 for s in new for r in s.refs)
    assert [g.objects for g in plan.generations] == [10, 6] and plan.generations[0].created.startswith("2026-01-01")
    # The new generation is itself mixed: the same keyed order a fresh plan of those objects has.
    alone = make_plan(cfg, [r for s in new for r in s.refs], [], ["a", "b"])
    assert _layout(alone) == _layout(plan)[len(old):]

    write_plan_record(out, plan)
    again = make_plan(cfg, grown, [], ["b"], read_plan_record(out))
    assert not again.new_generation and _layout(again) == _layout(plan) and again.fingerprint == plan.fingerprint
    assert (out / "generations" / "gen-0001.uids").read_text().split() == plan.new_uids()


def test_recorded_plans_refuse_other_settings_and_damaged_uid_lists(tmp_path):
    from c2p.shards import PlanMismatch
    from c2p.shards.output import claim_output
    from c2p.shards.plan import render_settings

    out = tmp_path / "o"
    out.mkdir()
    cfg = _grow_cfg(tmp_path)
    write_plan_record(out, make_plan(cfg, _refs(10), [], ["a"]))
    assert claim_output(out, render_settings(cfg), overwrite=False) is not None
    with pytest.raises(PlanMismatch, match=r"render settings differ \(seed: 0 -> 1\)"):
        claim_output(out, render_settings(_grow_cfg(tmp_path, "job.seed=1")), overwrite=False)
    (out / "generations" / "gen-0000.uids").write_text("u000\n")
    with pytest.raises(PlanMismatch, match=r"gen-0000.uids: 1 uids; expected 10"):
        make_plan(cfg, _refs(10), [], ["a"], read_plan_record(out))
    (out / "plan.json").write_text('{"corpus": "c", "fingerprint": "x", "settings": {}}')
    with pytest.raises(PlanMismatch, match="plan format 1.*job.overwrite=true"):
        read_plan_record(out)


def test_plan_fingerprint_follows_render_settings_only(tmp_path):
    base = [f"corpus.root={tmp_path}", f"out={tmp_path}/o"]
    cfg = load_config(RenderJobConfig, None, base)
    fp = make_plan(cfg, _refs(5), [], ["a"]).fingerprint
    for same in ["job.num_cpus=2", "job.max_retries=0", "job.previews=0", "job.max_in_flight=3", f"out={tmp_path}/other"]:
        assert make_plan(load_config(RenderJobConfig, None, base + [same]), _refs(5), [], ["a"]).fingerprint == fp, same
    for other in ["views.image_size=64", "job.seed=1", "job.points=1024", "job.shard_size=2", "views.set=6", "imgfeat.model=c2p-tiny"]:
        assert make_plan(load_config(RenderJobConfig, None, base + [other]), _refs(5), [], ["a"]).fingerprint != fp, other
    assert render_settings(cfg)["corpus"]["root"] == str(tmp_path.resolve())


def test_duplicate_keys_and_object_seeds():
    refs = _refs(3) + [ObjectRef("c", "u001", "a", 0, "/src/dup"), ObjectRef("c", "u.001", "a", 0, "/src/dot"),
                       ObjectRef("c", "u_001", "a", 0, "/src/us")]  # "u.001" and "u_001" are both key "c-u_001"
    unique, dups = unique_refs(list(reversed(refs)))  # the first by (uid, source) is kept, whatever the listing order
    assert sorted(r.source for r in unique) == ["/src/0", "/src/1", "/src/2", "/src/dot"]
    assert [d["source"] for d in dups] == ["/src/dup", "/src/us"]
    (shard,) = cut_shards(unique, 10)
    assert sorted(r.source for r in shard.refs) == sorted(r.source for r in unique)
    assert {d["source"] for d in dups} == {"/src/dup", "/src/us"} and all(d["stage"] == "plan" for d in dups)
    assert object_seed(0, "c", "u1") == object_seed(0, "c", "u1") != object_seed(1, "c", "u1")
    assert 0 <= object_seed(0, "c", "u1") < 2**31


def test_gpu_ordinal_and_fault_spec(monkeypatch):
    from c2p.shards.faults import parse_fault
    from c2p.shards.raytasks import cuda_ordinal

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert cuda_ordinal([5]) == 1 and cuda_ordinal([]) is None  # Ray's physical id -> this process's ordinal
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert cuda_ordinal(["2"]) == 2
    assert parse_fault("") is None
    assert parse_fault("shard=3,after=2,marker=/m") == {"shard": 3, "after": 2, "marker": "/m"}
    with pytest.raises(ValueError, match="C2P_FAULT_INJECT"):
        parse_fault("after=2")


def test_fast_png_is_a_standard_lossless_png():
    from c2p.schema import encode_png_rgb

    image = np.random.default_rng(0).integers(0, 256, (31, 17, 3), dtype=np.uint8)
    data = encode_png_rgb(image)
    assert data == encode_png_rgb(image)  # deterministic
    assert np.array_equal(decode_image(data), image)
    with pytest.raises(ValueError, match="expected uint8"):
        encode_png_rgb(image[..., 0])


def test_config_refuses_bad_values_before_writing(tmp_path):
    from c2p.cli.render import main

    out = tmp_path / "never"
    assert main(["--corpus", "nope", "--root", str(tmp_path), "--out", str(out)]) == 2
    assert main(["--corpus", "synthetic", "--root", str(tmp_path), "--out", str(out), "shard_size=0"]) == 2
    with pytest.raises(ConfigError, match="imgfeat.tag"):
        load_config(RenderJobConfig, None, [f"corpus.root={tmp_path}", f"out={out}", "imgfeat.model=c2p-tiny", "imgfeat.tag=a.b"])
    assert not out.exists()


# ----------------------------------------------------------------------------- previews


def test_previews_pair_rgb_with_point_depth_when_no_depth_is_stored(tmp_path):
    """Without depth.<v>.png members the contact sheet renders each view's depth from points.npy."""
    from PIL import Image

    from c2p.shards.preview import write_previews

    rng = np.random.default_rng(0)

    def sheet(with_points: bool) -> tuple[int, int]:
        out = tmp_path / f"p{int(with_points)}"
        out.mkdir()
        samples = [object_sample("t", f"o{i}", "c", 0, rng.uniform(-0.5, 0.5, (64, 3)), views=[[0.0, 0.0, 1.0], [0.0, 90.0, 1.0]],
                                 rgb=[rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(2)], source="mem",
                                 drop=() if with_points else ("points.npy",)) for i in range(2)]
        index = ShardIndex.load(write_shard_dir(out, [samples], corpus="t", labels=["c"]))
        (path,) = write_previews(out, index, 2)
        return Image.open(path).size

    with_depth, rgb_only = sheet(True), sheet(False)
    assert with_depth[0] == rgb_only[0] and with_depth[1] > rgb_only[1]  # a depth row under each RGB row
