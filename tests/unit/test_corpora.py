"""Every corpus reader on fixtures written here in the real on-disk format, broken cases included.

Each broken input must become an ErrorRecord naming its path and the reason, while the good
objects around it are still read.
"""

import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from c2p.corpora import CorpusError, ErrorRecord, ObjectRecord, open_corpus
from c2p.corpora.meshio import parse_off

# ----------------------------------------------------------------------------- helpers

TETRA_OBJ = """mtllib model_normalized.mtl
v 0 0 0
v 1 0 0
v 0 1 0
v 0 0 1
vt 0 0
vt 1 0
vt 0 1
vt 1 1
usemtl mat0
f 1/1 2/2 3/3
f 1/1 3/3 4/4
f 1/1 4/4 2/2
f 2/2 4/4 3/3
"""
MTL = "newmtl mat0\nKd 0.100000 0.600000 0.200000\nmap_Kd ../images/texture0.png\n"
GARBAGE = bytes(range(256)) * 3


def _png(path: Path, size=4, value=128):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def _split(records):
    ok = [r for r in records if isinstance(r, ObjectRecord)]
    bad = {r.uid: r for r in records if isinstance(r, ErrorRecord)}
    return ok, bad


def _check_labels(corpus, refs):
    assert corpus.labels == sorted(corpus.labels) and len(set(corpus.labels)) == len(corpus.labels)
    for r in refs:
        assert corpus.labels[r.label_index] == r.label
    assert [r.uid for r in refs] == sorted(r.uid for r in refs)


# ----------------------------------------------------------------------------- ShapeNetCore v2


def _shapenet_model(root, synset, model, obj=TETRA_OBJ, mtl=MTL, texture=True):
    d = root / synset / model / "models"
    d.mkdir(parents=True)
    (d / "model_normalized.obj").write_text(obj) if isinstance(obj, str) else (d / "model_normalized.obj").write_bytes(obj)
    (d / "model_normalized.mtl").write_text(mtl)
    if texture:
        _png(root / synset / model / "images" / "texture0.png")


def test_shapenet_core_v2_good_and_broken_models(tmp_path):
    import trimesh

    root = tmp_path / "ShapeNetCore.v2"
    root.mkdir()
    taxonomy = [{"synsetId": "03001627", "name": "chair", "children": [], "numInstances": 9},
                {"synsetId": "02691156", "name": "airplane,aeroplane,plane", "children": [], "numInstances": 1},
                {"synsetId": "04379243", "name": "table", "children": [], "numInstances": 0}]  # not on disk
    (root / "taxonomy.json").write_text(json.dumps(taxonomy))
    _shapenet_model(root, "02691156", "plane1")
    _shapenet_model(root, "03001627", "good")
    _shapenet_model(root, "03001627", "notexture", texture=False)
    _shapenet_model(root, "03001627", "garbage", obj=GARBAGE)
    _shapenet_model(root, "03001627", "empty", obj="")
    _shapenet_model(root, "03001627", "nan", obj=TETRA_OBJ.replace("v 1 0 0", "v nan 0 0"))
    _shapenet_model(root, "03001627", "nofaces", obj="v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    (root / "03001627" / "dir" / "models" / "model_normalized.obj").mkdir(parents=True)
    rows = [["id", "synsetId", "subSynsetId", "modelId", "split"]]
    models = ["good", "notexture", "garbage", "empty", "nan", "nofaces", "dir", "missing"]
    rows += [[i, "03001627", "03001627", m, "train"] for i, m in enumerate(models)]
    rows += [[20, "2691156", "2691156", "plane1", "test"]]  # pandas-style: leading zero lost
    with (root / "all.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)

    c = open_corpus("shapenet", root, "train")
    assert c.labels == ["airplane", "chair"]  # first taxonomy name; only synsets on disk
    refs, errors = c.list()
    _check_labels(c, refs)
    listed = {e.uid: e.reason for e in errors}
    assert listed == {"03001627-empty": "empty file", "03001627-dir": "is a directory, expected a file",
                      "03001627-missing": "missing file"}
    ok, bad = _split(list(c.records()))
    assert sorted(r.ref.uid for r in ok) == ["03001627-good", "03001627-notexture"]
    assert set(bad) == {"03001627-empty", "03001627-dir", "03001627-missing", "03001627-garbage",
                        "03001627-nan", "03001627-nofaces"}
    assert "NaN" in bad["03001627-nan"].reason and bad["03001627-nan"].source.endswith("nan/models/model_normalized.obj")
    assert "triangle" in bad["03001627-garbage"].reason or "unreadable" in bad["03001627-garbage"].reason
    assert "triangles" in bad["03001627-nofaces"].reason
    good = next(r for r in ok if r.ref.uid.endswith("good"))
    assert isinstance(good.mesh, trimesh.Trimesh) and good.mesh.visual.material.image is not None
    # Missing texture: the mesh loads and still carries the MTL's diffuse colour for the renderer.
    nt = next(r for r in ok if r.ref.uid.endswith("notexture"))
    assert nt.mesh.visual.material.image is None
    assert nt.mesh.visual.material.main_color[:3].tolist() == [26, 153, 51]

    test_refs, test_err = open_corpus("shapenet", root, "test").list()
    assert [r.uid for r in test_refs] == ["02691156-plane1"] and test_refs[0].label == "airplane" and not test_err
    assert test_refs[0].label_index == 0
    assert len(open_corpus("shapenet", root, "all").list()[0]) == 6  # every model folder on disk with a non-empty file


def test_shapenet_without_split_file_reads_everything_as_train(tmp_path):
    root = tmp_path / "sn"
    root.mkdir()
    (root / "taxonomy.json").write_text(json.dumps([{"synsetId": "03001627", "name": "chair"}]))
    _shapenet_model(root, "03001627", "a")
    _shapenet_model(root, "03001627", "b")
    assert len(open_corpus("shapenet", root, "train").list()[0]) == 2
    assert open_corpus("shapenet", root, "test").list() == ([], [])
    with pytest.raises(CorpusError, match="taxonomy.json"):
        open_corpus("shapenet", tmp_path)  # no taxonomy: not a ShapeNet root


def test_shapenet_texture_cannot_escape_the_object_folder(tmp_path):
    root = tmp_path / "sn"
    root.mkdir()
    (root / "taxonomy.json").write_text(json.dumps([{"synsetId": "03001627", "name": "chair"}]))
    _png(tmp_path / "secret.png")
    _shapenet_model(root, "03001627", "a", mtl="newmtl mat0\nKd 1 0 0\nmap_Kd ../../../../secret.png\n", texture=False)
    (rec,) = list(open_corpus("shapenet", root).records())
    assert isinstance(rec, ObjectRecord) and rec.mesh.visual.material.image is None


# ----------------------------------------------------------------------------- ModelNet


def test_parse_off_header_variants():
    v, f = parse_off("OFF3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n")  # counts on the OFF line, as in ModelNet
    assert v.shape == (3, 3) and f.tolist() == [[0, 1, 2]]
    # comments, blank lines, a quad (fan-triangulated) with trailing face colour
    v, f = parse_off("OFF\n# c\n\n4 1 0\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3 255 0 0\n")
    assert f.tolist() == [[0, 1, 2], [0, 2, 3]]
    for text, reason in [("", "empty"), ("PLY\n", "OFF"), ("OFF\n3 1\n0 0 0\n", "truncated"),
                         ("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n", "indices"),
                         ("OFF\nthree one zero\n", "counts"), ("OFF\n0 0 0\n", "> 0")]:
        with pytest.raises(CorpusError, match=reason):
            parse_off(text, "x.off")


# A tetrahedron in Geomview's OFF variants, as CGAL's sample meshes and other tools write them.
_TET_XYZ = ["0 0 0", "1 0 0", "0 1 0", "0 0 1"]
_TET_FACES = ["3 0 1 2", "3 0 1 3", "3 0 2 3", "3 1 2 3"]


@pytest.mark.parametrize("keyword,extra", [
    ("COFF", " 255 0 0 255"),                 # RGBA vertex colour (CGAL's sample meshes)
    ("COFF", " 0.5 0.5 0.5"),                 # RGB colour as floats
    ("NOFF", " 0 0 1"),                       # normal
    ("CNOFF", " 0 0 1 0.1 0.2 0.3 1"),        # normal, then colour
    ("STOFF", " 0.25 0.75"),                  # texture coordinates
    ("STCNOFF", " 0 0 1 1 1 1 1 0.5 0.5"),    # normal, colour, texture
])
def test_parse_off_geomview_variants_drop_the_columns_after_xyz(keyword, extra):
    text = "\n".join([keyword, "4 4 6", *(v + extra for v in _TET_XYZ), *_TET_FACES]) + "\n"
    v, f = parse_off(text, f"tet.{keyword}.off")
    assert v.tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert f.tolist() == [[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]]


def test_parse_off_homogeneous_dimension_and_face_colours():
    # 4OFF: x y z w, divided by w
    v, _ = parse_off("4OFF\n4 1 0\n0 0 0 1\n2 0 0 2\n0 4 0 4\n0 0 3 3\n3 0 1 2\n")
    assert v.tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]
    # nOFF: the dimension (3) before the counts, on its own line or the keyword's
    for head in ("nOFF\n3\n4 4 0", "nOFF 3 4 4 0"):
        v, f = parse_off("\n".join([head, *_TET_XYZ, *_TET_FACES]))
        assert v.shape == (4, 3) and f.shape == (4, 3)
    # face lines with colours after the indices: RGBA, RGB and a colour-map index
    faces = ["3 0 1 2 1 0 0 1", "3 0 1 3 0.5 0.5 0.5", "3 0 2 3 7", "3 1 2 3"]
    _, f = parse_off("\n".join(["COFF", "4 4 0", *(x + " 1 1 1 1" for x in _TET_XYZ), *faces]))
    assert f.tolist() == [[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]]


def test_parse_off_refuses_what_it_cannot_read_naming_the_header():
    for text, reason in [("OFF BINARY\n", "binary OFF"), ("nOFF\n4\n4 1 0\n", "dimension '4', expected 3"),
                         ("XOFF\n3 1 0\n", "COFF, NOFF"), ("COFF\n3 1 0\n0 0\n1 0\n0 1\n3 0 1 2\n", "fewer than 3"),
                         ("4OFF\n3 1 0\n0 0 0 1\n1 0 0 0\n0 1 0 1\n3 0 1 2\n", "w = 0")]:
        with pytest.raises(CorpusError, match=reason):
            parse_off(text, "x.off")


def _off(path: Path, text: str | bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


def test_modelnet_good_and_broken_files(tmp_path):
    root = tmp_path / "ModelNet40"
    tri = "3 0 1 2\n3 0 2 3\n3 0 3 1\n3 1 3 2\n"
    verts = "0 0 0\n10 0 0\n0 10 0\n0 0 10\n"
    _off(root / "zebra" / "train" / "zebra_0001.off", f"OFF\n4 4 0\n{verts}{tri}")
    _off(root / "zebra" / "train" / "zebra_0002.off", f"OFF4 4 0\n{verts}{tri}")  # counts on the OFF line
    _off(root / "zebra" / "test" / "zebra_0003.off", f"OFF\n4 4 0\n{verts}{tri}")
    _off(root / "apple" / "train" / "apple_0001.off", f"OFF\n4 4 0\n{verts}{tri}")
    _off(root / "apple" / "train" / "apple_0002.off", GARBAGE)
    _off(root / "apple" / "train" / "apple_0003.off", "")
    _off(root / "apple" / "train" / "apple_0004.off", f"OFF\n4 4 0\n{verts.replace('10 0 0', 'nan 0 0')}{tri}")
    _off(root / "apple" / "train" / "apple_0005.off", f"OFF\n4 4 0\n{verts}")  # truncated
    (root / "apple" / "train" / "apple_0006.off").mkdir()
    _off(root / "apple" / "train" / "notes.txt", "not a mesh")  # ignored: not .off
    (root / "__MACOSX").mkdir()  # no train/test inside: not a class

    c = open_corpus("modelnet", root, "train")
    assert c.labels == ["apple", "zebra"] and c.up_axis == "z"
    refs, errors = c.list()
    _check_labels(c, refs)
    assert {e.uid: e.reason for e in errors} == {"apple_0003": "empty file", "apple_0006": "is a directory, expected a file"}
    ok, bad = _split(list(c.records()))
    assert sorted(r.ref.uid for r in ok) == ["apple_0001", "zebra_0001", "zebra_0002"]
    assert "ASCII" in bad["apple_0002"].reason and "NaN" in bad["apple_0004"].reason
    assert "truncated" in bad["apple_0005"].reason and bad["apple_0005"].source.endswith("apple_0005.off")
    z2 = next(r for r in ok if r.ref.uid == "zebra_0002")
    assert len(z2.mesh.faces) == 4 and z2.mesh.vertices.max() == 10.0 and z2.ref.label_index == 1
    assert [r.uid for r in open_corpus("modelnet", root, "test").list()[0]] == ["zebra_0003"]
    assert len(open_corpus("modelnet", root, "all").list()[0]) == 7
    with pytest.raises(CorpusError, match="no ModelNet class folders"):
        open_corpus("modelnet", tmp_path / "ModelNet40" / "__MACOSX")


# ----------------------------------------------------------------------------- ShapeNet-55


def test_shapenet55_points_paired_with_released_renders(tmp_path):
    data = tmp_path / "data"
    root = data / "ShapeNet55"
    pc = root / "shapenet_pc"
    pc.mkdir(parents=True)
    rng = np.random.default_rng(0)
    uids = {"train": ["03001627-aaa", "03001627-norender", "02691156-bbb", "03001627-nan", "03001627-garbage",
                      "03001627-empty", "03001627-missing", "03001627-view9", "03001627-shape"],
            "test": ["04379243-ccc"]}
    for split, names in uids.items():
        (root / "ShapeNet-55").mkdir(exist_ok=True)
        (root / "ShapeNet-55" / f"{split}.txt").write_text("".join(f"{u}.npy\n" for u in names))
        for u in names:
            if u.endswith("missing"):
                continue
            arr = rng.standard_normal((8192, 3)).astype(np.float32)
            if u.endswith("nan"):
                arr[5, 1] = np.nan
            if u.endswith("shape"):
                arr = arr[:, :2]
            np.save(pc / f"{u}.npy", arr)
            if not u.endswith("norender"):
                for v in range(10):
                    if not (u.endswith("view9") and v == 9):
                        _png(data / "rendering" / u.replace("-", "_") / f"{v}.png")
    (pc / "03001627-garbage.npy").write_bytes(GARBAGE)
    (pc / "03001627-empty.npy").write_bytes(b"")

    c = open_corpus("shapenet55", root, "train")  # renders found at data/rendering, as in CLIP2Point
    assert c.labels == ["airplane", "chair", "table"]  # names of synsets in train ∪ test, sorted
    refs, errors = c.list()
    _check_labels(c, refs)
    assert {e.uid: e.reason for e in errors} == {"03001627-norender": "missing render folder",
                                                 "03001627-empty": "empty file", "03001627-missing": "missing file"}
    assert next(e for e in errors if e.uid.endswith("norender")).source.endswith("rendering/03001627_norender")
    ok, bad = _split(list(c.records()))
    assert sorted(r.ref.uid for r in ok) == ["02691156-bbb", "03001627-aaa"]
    assert "NaN" in bad["03001627-nan"].reason and "unreadable" in bad["03001627-garbage"].reason
    assert "[N, 3]" in bad["03001627-shape"].reason
    assert bad["03001627-view9"].source.endswith("03001627_view9/9.png")
    rec = next(r for r in ok if r.ref.uid == "03001627-aaa")
    assert rec.mesh is None and rec.points.shape == (8192, 3) and rec.points.dtype == np.float32
    assert [Path(p).name for p in rec.renders] == [f"{v}.png" for v in range(10)]
    assert Path(rec.renders[0]).parent.name == "03001627_aaa"

    points_only = open_corpus("shapenet55", root, "train", renders=False)
    ok2, bad2 = _split(list(points_only.records()))
    assert {r.ref.uid for r in ok2} == {"02691156-bbb", "03001627-aaa", "03001627-norender", "03001627-view9"}
    assert all(r.renders is None for r in ok2)
    test_refs = open_corpus("shapenet55", root, "test").list()[0]
    assert [(r.uid, r.label, r.label_index) for r in test_refs] == [("04379243-ccc", "table", 2)]
    with pytest.raises(CorpusError, match="render folder"):
        open_corpus("shapenet55", root, renders=tmp_path / "nowhere")


# ----------------------------------------------------------------------------- Objaverse


def _glb(path: Path, colour=(200, 30, 30, 255)):
    import trimesh

    m = trimesh.creation.box(extents=[1, 2, 3])
    m.visual.face_colors = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(m.export(file_type="glb"))


@pytest.mark.parametrize("fmt", ["csv", "json", "lvis"])
def test_objaverse_glb_folder_with_label_table(tmp_path, fmt):
    root = tmp_path / "objaverse"
    _glb(root / "glbs" / "000-001" / "u1.glb")
    _glb(root / "glbs" / "000-002" / "u2.glb")
    (root / "glbs" / "000-002" / "ugarbage.glb").write_bytes(GARBAGE)
    (root / "glbs" / "000-002" / "uempty.glb").write_bytes(b"")
    (root / "glbs" / "000-003" / "udir.glb").mkdir(parents=True)
    table = {"u1": ("mug", "a white mug"), "u2": ("chair", "a chair"), "ugarbage": ("chair", ""),
             "uempty": ("mug", ""), "udir": ("mug", ""), "umissing": ("chair", "")}
    if fmt == "csv":
        with (root / "labels.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["uid", "label", "caption"])
            w.writerows([u, lbl, cap] for u, (lbl, cap) in table.items())
    elif fmt == "json":
        (root / "labels.json").write_text(json.dumps({u: {"label": lbl, "caption": cap} for u, (lbl, cap) in table.items()}))
    else:  # Objaverse-LVIS annotations: {category: [uid, ...]}, captions from a Cap3D-style CSV
        lvis = {}
        for u, (lbl, _) in table.items():
            lvis.setdefault(lbl, []).append(u)
        (root / "lvis-annotations.json").write_text(json.dumps(lvis))
        (tmp_path / "Cap3D_automated_Objaverse.csv").write_text("u1,a white mug\nu2,a chair\n")
    kw = {"captions": tmp_path / "Cap3D_automated_Objaverse.csv"} if fmt == "lvis" else {}
    c = open_corpus("objaverse", root, "train", **kw)
    assert c.labels == ["chair", "mug"] and c.up_axis == "y"
    refs, errors = c.list()
    _check_labels(c, refs)
    assert {e.uid: e.reason for e in errors} == {"uempty": "empty file", "udir": "is a directory, expected a file",
                                                 "umissing": "missing file"}
    ok, bad = _split(list(c.records()))
    assert sorted(r.ref.uid for r in ok) == ["u1", "u2"] and set(bad) == {"uempty", "udir", "umissing", "ugarbage"}
    u1 = next(r for r in ok if r.ref.uid == "u1")
    assert u1.ref.caption == "a white mug" and u1.ref.label == "mug" and u1.ref.label_index == 1
    assert sum(len(g.faces) for g in u1.mesh.geometry.values()) == 12  # a glTF scene, visuals kept
    assert bad["ugarbage"].source.endswith("ugarbage.glb")
    assert pickle.loads(pickle.dumps(u1)).ref == u1.ref


def test_objaverse_without_table_is_refused(tmp_path):
    _glb(tmp_path / "a.glb")
    with pytest.raises(CorpusError, match="label table"):
        open_corpus("objaverse", tmp_path)


# ----------------------------------------------------------------------------- ScanObjectNN


def test_scanobjectnn_h5_with_data_and_label(tmp_path):
    import h5py

    from c2p.corpora.scanobjectnn import SCANOBJECTNN_CLASSES

    root = tmp_path / "main_split"
    root.mkdir()
    data = np.random.default_rng(0).standard_normal((5, 2048, 3)).astype(np.float32)
    data[3, 7, 0] = np.nan
    labels = np.array([0, 14, 4, 4, 15])  # 15: out of range
    with h5py.File(root / "training_objectdataset.h5", "w") as f:
        f["data"] = data
        f["label"] = labels
    (root / "test_objectdataset.h5").write_bytes(GARBAGE)

    c = open_corpus("scanobjectnn", root, "train")
    assert c.labels == sorted(SCANOBJECTNN_CLASSES) and len(c.labels) == 15
    refs, errors = c.list()
    _check_labels(c, refs)
    assert [r.label for r in refs] == ["bag", "toilet", "chair", "chair"]
    assert [e.uid for e in errors] == ["train-00004"] and "label 15" in errors[0].reason
    ok, bad = _split(list(c.records()))
    assert [r.ref.uid for r in ok] == ["train-00000", "train-00001", "train-00002"]
    assert "NaN" in bad["train-00003"].reason and bad["train-00003"].source.endswith("training_objectdataset.h5[3]")
    np.testing.assert_array_equal(ok[1].points, data[1])
    test_refs, test_errors = open_corpus("scanobjectnn", root, "test").list()
    assert test_refs == [] and len(test_errors) == 1 and "unreadable h5" in test_errors[0].reason
    all_refs, all_errors = open_corpus("scanobjectnn", root, "all").list()
    assert len(all_refs) == 4 and len(all_errors) == 2
    missing = open_corpus("scanobjectnn", root, "train", variant="objectdataset_augmentedrot_scale75").list()
    assert missing[0] == [] and missing[1][0].reason == "missing file"


# ----------------------------------------------------------------------------- manifest


def test_manifest_jsonl_of_meshes_and_points(tmp_path):
    import trimesh

    d = tmp_path / "things"
    d.mkdir()
    (d / "tet.obj").write_text(TETRA_OBJ.replace("mtllib model_normalized.mtl\n", "").replace("usemtl mat0\n", ""))
    np.save(d / "pts.npy", np.random.default_rng(0).standard_normal((100, 6)).astype(np.float64))
    trimesh.PointCloud(np.random.default_rng(1).standard_normal((50, 3))).export(d / "cloud.ply")
    np.save(d / "nan.npy", np.full((10, 3), np.nan))
    (d / "garbage.obj").write_bytes(GARBAGE)
    (d / "thing.xyz").write_text("0,0,0\n1,0,0\n0,1,0\n")
    (d / "model.fbx").write_text("x")
    lines = [
        {"path": "things/tet.obj", "label": "tetra", "caption": "a small tetrahedron"},
        {"path": str(d / "pts.npy"), "label": "blob", "uid": "p1"},
        {"path": "things/cloud.ply", "label": "blob"},
        {"path": "things/nan.npy", "label": "blob"},
        {"path": "things/garbage.obj", "label": "tetra"},
        {"path": "things/thing.xyz", "label": "tri", "split": "test"},
        {"path": "things/absent.npy", "label": "tri"},
        {"path": "things/model.fbx", "label": "tri"},
        {"path": "things/tet.obj", "label": "tetra"},  # same uid "tet" again
        {"label": "tri"},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\n{not json\n\n"
    (tmp_path / "manifest.jsonl").write_text(text)

    c = open_corpus("manifest", tmp_path / "manifest.jsonl", "train")
    assert c.labels == ["blob", "tetra", "tri"]
    refs, errors = c.list()
    _check_labels(c, refs)
    reasons = {e.uid: e.reason for e in errors}
    assert reasons["absent"] == "missing file" and "not supported" in reasons["model"]
    assert "duplicate" in reasons["tet"] and "missing ['path']" in reasons["line-000010"]
    assert "line 11" in reasons["line-000011"]
    ok, bad = _split(list(c.records()))
    by = {r.ref.uid: r for r in ok}
    assert set(by) == {"tet", "p1", "cloud"} and "NaN" in bad["nan"].reason and "garbage" in bad
    assert len(by["tet"].mesh.faces) == 4 and by["tet"].points is None and by["tet"].ref.caption == "a small tetrahedron"
    assert by["p1"].points.shape == (100, 3) and by["p1"].points.dtype == np.float32 and by["p1"].mesh is None
    assert by["cloud"].points.shape == (50, 3)
    test_recs = list(open_corpus("manifest", tmp_path / "manifest.jsonl", "test").records())
    (t,) = [r for r in test_recs if isinstance(r, ObjectRecord)]
    assert len(test_recs) == 3  # the two unparsable lines are reported in every split
    assert t.points.shape == (3, 3) and t.ref.label_index == 2
    with pytest.raises(ValueError, match="up_axis"):
        open_corpus("manifest", tmp_path / "manifest.jsonl", up_axis="x")


# ----------------------------------------------------------------------------- entry point


def test_open_corpus_refuses_unknown_names_splits_and_roots(tmp_path):
    with pytest.raises(ValueError, match="expected one of"):
        open_corpus("pointnet", tmp_path)
    with pytest.raises(ValueError, match="split"):
        open_corpus("modelnet", tmp_path, "val")
    with pytest.raises(CorpusError, match="does not exist"):
        open_corpus("modelnet", tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(CorpusError, match="not a folder"):
        open_corpus("shapenet", tmp_path / "file.txt")
    with pytest.raises(CorpusError, match="not a file"):
        open_corpus("manifest", tmp_path)


def test_records_keep_reading_past_failures_in_order(tmp_path):
    from c2p.corpora.synthetic import write_synthetic

    root = write_synthetic(tmp_path / "syn", "modelnet", per_class=3, seed=0, classes=["box", "cone"])
    (root / "box" / "train" / "box_0002.off").write_text("OFF\n3 1 0\n0 0 0\n")
    recs = list(open_corpus("synthetic", root).records())
    assert [type(r).__name__ for r in recs] == ["ObjectRecord", "ErrorRecord"] + ["ObjectRecord"] * 4
    assert recs[1].uid == "box_0002" and recs[1].corpus == "synthetic" and "truncated" in recs[1].reason
