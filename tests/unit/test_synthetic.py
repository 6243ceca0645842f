"""The procedural synthetic corpus: classes, variation, determinism, both on-disk layouts, CLI."""

import hashlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from c2p.corpora import open_corpus
from c2p.corpora.synthetic import (
    COLOURS,
    MATERIALS,
    SYNSET_IDS,
    SYNTHETIC_CLASSES,
    make_object,
    write_synthetic,
)

REPO = Path(__file__).resolve().parents[2]


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_at_least_twelve_classes_small_valid_meshes_with_variation():
    assert len(SYNTHETIC_CLASSES) >= 12 and SYNTHETIC_CLASSES == sorted(SYNTHETIC_CLASSES)
    for name in ("box", "sphere", "cylinder", "cone", "torus", "capsule", "pyramid", "table", "chair", "lamp", "mug"):
        assert name in SYNTHETIC_CLASSES
    for cls in SYNTHETIC_CLASSES:
        a, b = make_object(cls, 0, 0), make_object(cls, 0, 1)
        for o in (a, b):
            assert 0 < len(o["faces"]) < 5000, (cls, len(o["faces"]))
            assert np.isfinite(o["vertices"]).all() and o["faces"].max() < len(o["vertices"])
            assert o["uv"].shape == (len(o["vertices"]), 2) and o["uv"].min() >= 0 and o["uv"].max() <= 1
            assert o["texture"].shape == (64, 64, 3) and o["texture"].dtype == np.uint8
            colour, material = o["caption"].split()[1:3]
            assert o["caption"].endswith(cls) and colour in COLOURS and material in MATERIALS
        # Instances differ in shape (proportions/deformation/rotation), not only in colour.
        assert a["vertices"].shape != b["vertices"].shape or not np.allclose(a["vertices"], b["vertices"])
        assert a["model_id"] != b["model_id"]


def test_rotation_is_about_the_up_axis_only():
    # A capsule is taller than wide whatever its azimuth: up stays up (z in the construction frame).
    for i in range(4):
        v = make_object("capsule", 3, i)["vertices"]
        ext = v.max(0) - v.min(0)
        assert ext[2] > ext[0] and ext[2] > ext[1], ext


def test_same_seed_same_bytes_other_seed_other_bytes_and_corpora_extend(tmp_path):
    classes = ["chair", "mug", "torus"]
    a = _tree_digest(write_synthetic(tmp_path / "a", "shapenet", 2, seed=5, test_per_class=1, classes=classes))
    b = _tree_digest(write_synthetic(tmp_path / "b", "shapenet", 2, seed=5, test_per_class=1, classes=classes))
    assert a == b
    c = _tree_digest(write_synthetic(tmp_path / "c", "shapenet", 2, seed=6, test_per_class=1, classes=classes))
    assert c != a
    # More objects per class leave the earlier objects' files untouched.
    d = _tree_digest(write_synthetic(tmp_path / "d", "shapenet", 3, seed=5, test_per_class=0, classes=classes))
    # (object i depends on (seed, class, i) only; its split does not change its files).
    def objects(t):
        return {k: v for k, v in t.items() if k.endswith((".obj", ".png", ".mtl"))}

    assert objects(a) == objects(d) and len(objects(a)) == len(classes) * 3 * 3
    m1 = _tree_digest(write_synthetic(tmp_path / "m1", "modelnet", 1, seed=5, test_per_class=1, classes=classes))
    m2 = _tree_digest(write_synthetic(tmp_path / "m2", "modelnet", 1, seed=5, test_per_class=1, classes=classes))
    assert m1 == m2


def test_shapenet_layout_is_read_by_the_shapenet_and_synthetic_readers(tmp_path):
    import trimesh

    classes = ["capsule", "chair", "lamp"]
    root = write_synthetic(tmp_path / "sn", "shapenet", per_class=2, seed=0, test_per_class=1, classes=classes)
    for sid in (SYNSET_IDS[c] for c in classes):
        assert (root / sid).is_dir()
    for name in ("shapenet", "synthetic"):
        train, test, every = (open_corpus(name, root, s) for s in ("train", "test", "all"))
        assert train.labels == classes == test.labels and train.up_axis == "y"
        tr, err = train.list()
        assert err == [] and len(tr) == 6 and len(test.list()[0]) == 3 and len(every.list()[0]) == 9
        assert [r.uid for r in tr] == sorted(r.uid for r in tr)
        assert {r.uid for r in tr}.isdisjoint(r.uid for r in test.list()[0])
        for ref in tr:
            assert ref.corpus == name and train.labels[ref.label_index] == ref.label
            assert ref.caption.endswith(ref.label) and ref.caption.startswith(("a ", "an "))
            assert Path(ref.source).name == "model_normalized.obj"
    recs = list(open_corpus("synthetic", root, "train").records())
    assert len(recs) == 6
    # Records and readers travel to Ray workers by pickle.
    back = pickle.loads(pickle.dumps(recs[0]))
    assert back.ref == recs[0].ref and back.mesh.visual.material.image.size == (64, 64)
    pickle.loads(pickle.dumps(open_corpus("synthetic", root, "train")))
    for rec in recs:
        mesh = rec.mesh
        assert isinstance(mesh, trimesh.Trimesh) and rec.points is None
        # Textured: the PNG loaded through "../images/texture0.png", Kd colour named by the caption.
        assert mesh.visual.material.image is not None and mesh.visual.material.image.size == (64, 64)
        colour = rec.ref.caption.split()[1]
        assert np.abs(mesh.visual.material.main_color[:3].astype(int) - np.array(COLOURS[colour])).max() <= 1
        assert mesh.visual.uv is not None and len(mesh.visual.uv) == len(mesh.vertices)
        lo, hi = mesh.bounds
        assert abs(np.linalg.norm(hi - lo) - 1.0) < 1e-3  # ShapeNet v2 normalisation: diagonal 1
        if rec.ref.label == "capsule":  # world y-up
            ext = hi - lo
            assert ext[1] > ext[0] and ext[1] > ext[2]


def test_modelnet_layout_is_read_by_the_modelnet_and_synthetic_readers(tmp_path):
    classes = ["capsule", "cone", "table"]
    root = write_synthetic(tmp_path / "mn", "modelnet", per_class=2, seed=1, test_per_class=2, classes=classes)
    assert sorted(p.name for p in (root / "cone" / "train").iterdir()) == ["cone_0001.off", "cone_0002.off"]
    assert sorted(p.name for p in (root / "cone" / "test").iterdir()) == ["cone_0003.off", "cone_0004.off"]
    for name in ("modelnet", "synthetic"):
        c = open_corpus(name, root, "test")
        refs, errors = c.list()
        assert errors == [] and len(refs) == 6 and c.labels == classes and c.up_axis == "z"
        assert all(r.caption.endswith(r.label) for r in refs)
    for rec in open_corpus("synthetic", root, "train").records():
        assert rec.mesh.visual.kind is None or rec.mesh.visual.kind != "texture"  # OFF: geometry only
        ext = rec.mesh.extents
        assert ext.max() > 4.0  # not normalised, like the real files
        if rec.ref.label == "capsule":  # world z-up
            assert ext[2] > ext[0] and ext[2] > ext[1]


def test_write_synthetic_refuses_bad_arguments_and_foreign_folders(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        write_synthetic(tmp_path / "x", layout="obj")
    with pytest.raises(ValueError, match="classes"):
        write_synthetic(tmp_path / "x", classes=["unicorn"])
    with pytest.raises(ValueError, match="per_class"):
        write_synthetic(tmp_path / "x", per_class=0, test_per_class=0)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a synthetic corpus"):
        write_synthetic(foreign, per_class=1, classes=["box"])
    assert (foreign / "thesis.tex").read_text() == "precious"
    # An earlier synthetic corpus is replaced whole: no stale objects survive.
    out = write_synthetic(tmp_path / "s", "modelnet", per_class=2, classes=["box"])
    write_synthetic(out, "modelnet", per_class=1, classes=["box"])
    assert sorted(p.name for p in (out / "box" / "train").iterdir()) == ["box_0001.off"]


def test_cli_writes_a_corpus_and_ends_with_its_path(tmp_path):
    out = tmp_path / "cli"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "c2p.corpora.synthetic", "--out", str(out), "--layout", "shapenet",
         "--per-class", "1", "--seed", "2", "--test-per-class", "1", "--classes", "box", "mug"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out.resolve())
    assert len(open_corpus("shapenet", out, "all").list()[0]) == 4
    bad = subprocess.run([sys.executable, "-m", "c2p.corpora.synthetic", "--out", str(tmp_path / "b"), "--classes", "unicorn"],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    assert bad.returncode == 2 and "unicorn" in bad.stderr
