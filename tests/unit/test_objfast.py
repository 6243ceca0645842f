"""c2p.corpora.objfast: the fast OBJ reader returns exactly what trimesh returns, or None.

Every case is compared against ``trimesh.load(path, file_type="obj", resolver=BoundedResolver,
process=False)`` (what load_mesh_file did before the fast path): object types, geometry names
and order, scene graph, vertices/faces/normals/UVs bit for bit, materials and texture pixels,
metadata and load source. Cases inside the fast path also assert that it was taken (so a
trimesh upgrade that switches it off fails here, asking for a re-check); cases outside it
assert the fallback, and that load_mesh_file's result or CorpusError is unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from c2p.corpora import objfast
from c2p.corpora.base import CorpusError, require_file
from c2p.corpora.meshio import BoundedResolver, check_mesh, load_mesh_file
from c2p.corpora.objfast import load_obj_fast

REPO = Path(__file__).resolve().parents[2]


def _trimesh(path: Path, bound: Path):
    return trimesh.load(str(path), file_type="obj", resolver=BoundedResolver(str(path), bound), process=False)


def _fast(path: Path, bound: Path):
    return load_obj_fast(path, BoundedResolver(str(path), bound))


def _old_load_mesh_file(path: Path, bound: Path, file_type: str | None = None):
    """load_mesh_file as it was before the fast path."""
    require_file(path)
    try:
        mesh = trimesh.load(str(path), file_type=file_type, resolver=BoundedResolver(str(path), bound), process=False)
    except Exception as exc:
        raise CorpusError(path, f"unreadable mesh ({type(exc).__name__}: {exc})") from exc
    return check_mesh(path, mesh)


def _outcome(fn, path: Path, bound: Path, file_type: str | None = "obj"):
    try:
        return fn(path, bound, file_type)
    except CorpusError as exc:
        return ("CorpusError", str(exc))


def _equal(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _assert_material(a, b) -> None:
    assert type(a) is type(b)
    va, vb = dict(vars(a)), dict(vars(b))
    ia, ib = va.pop("image", None), vb.pop("image", None)
    assert _equal(va, vb), (va, vb)
    assert (ia is None) == (ib is None)
    if ia is not None:
        assert ia.info == ib.info and ia.mode == ib.mode and ia.size == ib.size
        assert np.array_equal(np.asarray(ia), np.asarray(ib))


def _assert_geometry(a, b) -> None:
    assert type(a) is type(b)
    assert _equal(np.asarray(a.vertices), np.asarray(b.vertices))
    assert _equal(np.asarray(a.faces), np.asarray(b.faces))
    # vertex normals read from the file sit in the cache; computed ones are not compared twice
    assert ("vertex_normals" in a._cache) == ("vertex_normals" in b._cache)
    if "vertex_normals" in a._cache:
        assert _equal(np.asarray(a.vertex_normals), np.asarray(b.vertex_normals))
    assert _equal(a.metadata, b.metadata)
    assert (a.source.file_path, a.source.file_type, a.source.resolver is not None) == (
        b.source.file_path,
        b.source.file_type,
        b.source.resolver is not None,
    )
    assert type(a.visual) is type(b.visual)
    if isinstance(a.visual, trimesh.visual.TextureVisuals):
        assert (a.visual.uv is None) == (b.visual.uv is None)
        if a.visual.uv is not None:
            assert _equal(np.asarray(a.visual.uv), np.asarray(b.visual.uv))
        _assert_material(a.visual.material, b.visual.material)
    else:
        assert _equal(np.asarray(a.visual.face_colors), np.asarray(b.visual.face_colors))


def assert_same(a, b) -> None:
    """trimesh's result ``a`` and the fast reader's ``b`` are the same."""
    assert type(a) is type(b)
    if isinstance(a, trimesh.Scene):
        assert list(a.geometry) == list(b.geometry)
        assert a.graph.to_edgelist() == b.graph.to_edgelist()
        assert _equal(a.metadata, b.metadata)
        for name in a.geometry:
            _assert_geometry(a.geometry[name], b.geometry[name])
    else:
        _assert_geometry(a, b)


def _check(path: Path, bound: Path, fast_path: bool) -> None:
    """The fast reader matches trimesh (or declines, as expected), and so does load_mesh_file."""
    got = _fast(path, bound)
    if fast_path:
        assert got is not None, f"{path.name}: fast path not taken"
        assert_same(_trimesh(path, bound), got)
    else:
        assert got is None, f"{path.name}: expected the trimesh fallback"
    new, old = _outcome(load_mesh_file, path, bound), _outcome(_old_load_mesh_file, path, bound)
    if isinstance(old, tuple):
        assert new == old
    else:
        assert_same(old, new)


# ---------------------------------------------------------------------------------------------
# synthetic corpus (ShapeNet layout): the originals and subdivided 10k+ face versions


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> list[Path]:
    sys.path.insert(0, str(REPO / "tests" / "benchmarks"))
    try:
        from bench_shards import subdivide_corpus
    finally:
        sys.path.pop(0)
    from c2p.corpora.synthetic import write_synthetic

    tmp = tmp_path_factory.mktemp("objfast")
    plain = write_synthetic(tmp / "plain", layout="shapenet", per_class=1, seed=0)
    fine = write_synthetic(tmp / "fine", layout="shapenet", per_class=1, seed=0, classes=["chair", "lamp", "mug"])
    subdivide_corpus(fine, 2)  # export_obj's layout (usemtl first, no "o"), 9.7k-18k faces
    return [plain, fine]


def test_synthetic_corpus(corpora):
    files = [p for root in corpora for p in sorted(root.rglob("*.obj"))]
    assert len(files) >= 14
    assert max(len(_trimesh(p, p.parent.parent).faces) for p in files) >= 10_000
    for path in files:
        _check(path, path.parent.parent, fast_path=True)


def test_corpus_records_unchanged(corpora, tmp_path, monkeypatch):
    """Loading a ShapeNet corpus (good, garbage and empty models) gives the same records with
    and without the fast path."""
    import shutil

    from c2p.corpora import open_corpus

    root = tmp_path / "c"
    shutil.copytree(corpora[0], root)
    objs = sorted(root.rglob("*.obj"))
    objs[0].write_bytes(bytes(range(256)) * 3)  # garbage
    objs[1].write_bytes(b"")  # empty
    objs[2].write_text("# nothing but a comment\n")  # no geometry
    objs[3].write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n")  # index out of range

    def records():
        out = []
        for rec in open_corpus("shapenet", root, "all").records():
            out.append(rec if hasattr(rec, "reason") else (rec.ref, rec.mesh))
        return out

    new = records()
    monkeypatch.setattr(objfast, "load_obj_fast", lambda path, resolver: None)
    old = records()
    assert len(new) == len(old) == len(objs)
    n_errors = 0
    for a, b in zip(old, new):
        if hasattr(a, "reason"):
            n_errors += 1
            assert a == b
        else:
            assert a[0] == b[0]
            assert_same(a[1], b[1])
    assert n_errors >= 3


# ---------------------------------------------------------------------------------------------
# hand-written OBJ files

QUAD_V = "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nv 0.5 0.5 1.25\n"
QUAD_VT = "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nvt 0.5 0.5\n"
QUAD_VN = "vn 0 0 1\nvn 0 0 -1\nvn 0.6 0 0.8\n"
MTL = """newmtl red
Kd 1.0 0.0 0.0
map_Kd tex.png
newmtl blue
Ka 0.1 0.1 0.1
Kd 0.0 0.0 1.0
Ns 10
illum 2
"""

CASES: dict[str, tuple[str, bool]] = {
    # name: (OBJ text, fast path expected)
    "plain_v": (QUAD_V + "f 1 2 3\nf 1 3 4\nf 1 2 5\nf 2 3 5\n", True),
    "v_vn": (QUAD_V + QUAD_VN + "f 1//1 2//1 3//1\nf 1//2 3//2 4//2\nf 1//3 2//3 5//3\n", True),
    "v_vt": ("mtllib m.mtl\n" + QUAD_V + QUAD_VT + "usemtl red\nf 1/1 2/2 3/3\nf 1/1 3/3 4/4\nf 1/5 2/2 5/5\n", True),
    "v_vt_vn": ("mtllib m.mtl\n" + QUAD_V + QUAD_VT + QUAD_VN + "usemtl red\nf 1/1/1 2/2/1 3/3/1\nf 1/1/2 3/3/2 4/4/2\n"
                "f 1/5/3 2/2/3 5/5/3\n", True),
    "uvw": (QUAD_V + "vt 0 0 0\nvt 1 0 0\nvt 1 1 0\nvt 0 1 0\nf 1/1 2/2 3/3\nf 1/1 3/3 4/4\n", True),
    "quads": (QUAD_V + QUAD_VT + "f 1/1 2/2 3/3 4/4\nf 1/1 2/2 5/5 4/4\n", True),
    "mixed_tri_quad": (QUAD_V + "f 1 2 3 4\nf 1 2 5\n", False),
    "pentagon": (QUAD_V + "f 1 2 3 4 5\n", True),
    "negative": (QUAD_V + "f -5 -4 -3\nf -5 -3 -2\n", False),
    "groups": ("mtllib m.mtl\n" + QUAD_V + QUAD_VT + "f 1/1 2/2 5/5\nusemtl blue\nf 1/1 2/2 3/3\nusemtl red\ns off\n"
               "f 1/1 3/3 4/4\ng part\nf 2/2 3/3 5/5\nusemtl blue\nf 3/3 4/4 5/5\nusemtl nosuch\nf 4/4 1/1 5/5\n", True),
    "groups_no_mtl": (QUAD_V + "usemtl a\nf 1 2 3\nusemtl b\nf 1 3 4\nusemtl a\nf 1 2 5\n", True),
    "interleaved": ("o thing\nv 0 0 0\nv 1 0 0\nvt 0 0\nvt 1 0\nv 1 1 0\nvt 1 1\nf 1/1 2/2 3/3\nv 0 1 0\nvt 0 1\n"
                    "f 1/1 3/3 4/4\n", True),
    "missing_mtl": ("mtllib nowhere.mtl\n" + QUAD_V + QUAD_VT + "usemtl red\nf 1/1 2/2 3/3\nf 1/1 3/3 4/4\n", True),
    "messy": ("# header\r\n\r\nmtllib m.mtl\r\no  named obj \r\n# v 9 9 9\r\n" + QUAD_V.replace("\n", "  \r\n")
              + "\r\ng g1\r\nusemtl red \r\ns 1\r\nf  1 2 3 \r\n\r\nf 1 3 4\r\n# end\r\n", True),
    "object_not_first": (QUAD_V + "usemtl red\no late\nf 1 2 3\n", True),
    # trimesh rewrites "+e"/"-e" to "e" before parsing: 1.5+e2 reads as 150
    "exponents": ("v 1e-05 -2.5E+01 3.0e2\nv 1 -0 1.5+e2\nv -1.5e-3 2 0.000001\nf 1 2 3\n", True),
    "object_groups": ("o thing\n" + QUAD_V + "usemtl a\nf 1 2 3\nusemtl b\nf 1 3 4\n", True),
    "duplicate_vertices": (QUAD_V + "v 0 0 0\nf 1 2 3\nf 6 3 4\n", True),
    "zero_index": (QUAD_V + "f 0 1 2\nf 1 2 3\n", True),
    "vertex_colors": ("v 0 0 0 1 0 0\nv 1 0 0 0 1 0\nv 0 1 0 0 0 1\nf 1 2 3\n", False),
    "usemtl_in_comment": (QUAD_V + "# usemtl red\nf 1 2 3\n", False),
    "tabs": (QUAD_V + "f 1\t2\t3\n", False),
    "line_element": (QUAD_V + "l 1 2\nf 1 2 3\n", False),
    "points_only": (QUAD_V, False),
    "out_of_range": (QUAD_V + "f 1 2 9\n", False),
    "vt_out_of_range": (QUAD_V + QUAD_VT + "f 1/1 2/2 3/9\n", True),
    "continuation": (QUAD_V + "f 1 2 \\\n3\n", True),
    "nan": ("v nan 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", False),
    "garbage": ("".join(map(chr, range(1, 128))) * 3, False),
    "binary": ("\x00\x01\x02v 1 2 3\n", False),
}


@pytest.fixture
def asset_dir(tmp_path) -> Path:
    (tmp_path / "m.mtl").write_text(MTL)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "tex.png")
    return tmp_path


@pytest.mark.parametrize("name", sorted(CASES))
def test_hand_written(name, asset_dir):
    text, fast_path = CASES[name]
    path = asset_dir / f"{name}.obj"
    path.write_bytes(text.encode("utf-8"))
    _check(path, asset_dir, fast_path)


def test_hand_written_cases_cover_scenes_and_textures(asset_dir):
    """Guard the cases above: the multi-material one is a Scene, textures do get loaded."""
    path = asset_dir / "groups.obj"
    path.write_text(CASES["groups"][0])
    scene = _fast(path, asset_dir)
    assert isinstance(scene, trimesh.Scene) and len(scene.geometry) == 4
    images = [g.visual.material.image for g in scene.geometry.values() if hasattr(g.visual, "material")]
    assert any(i is not None for i in images)


def test_garbage_and_empty_files(tmp_path):
    """Unusable files still fail in load_mesh_file exactly as before."""
    for name, data in {"garbage.obj": bytes(range(256)) * 3, "empty.obj": b"", "comment.obj": b"# x\n"}.items():
        path = tmp_path / name
        path.write_bytes(data)
        new, old = _outcome(load_mesh_file, path, tmp_path), _outcome(_old_load_mesh_file, path, tmp_path)
        assert isinstance(old, tuple) and new == old


def test_texture_outside_bound(tmp_path):
    """A texture escaping the bound is refused by the resolver the same way on both paths."""
    inner = tmp_path / "obj"
    inner.mkdir()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "outside.png")
    (inner / "m.mtl").write_text("newmtl red\nKd 1 0 0\nmap_Kd ../outside.png\n")
    path = inner / "x.obj"
    path.write_text("mtllib m.mtl\n" + QUAD_V + QUAD_VT + "usemtl red\nf 1/1 2/2 3/3\n")
    _check(path, inner, fast_path=True)
    assert _fast(path, inner).visual.material.image is None


def test_other_trimesh_version_falls_back(asset_dir, monkeypatch):
    path = asset_dir / "plain.obj"
    path.write_text(CASES["plain_v"][0])
    monkeypatch.setattr(objfast, "VERIFIED_TRIMESH", frozenset({"0.0.0"}))
    assert _fast(path, asset_dir) is None
    assert_same(_trimesh(path, asset_dir), load_mesh_file(path, asset_dir, "obj"))
