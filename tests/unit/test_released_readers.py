"""Readers of the released evaluation files, on fixtures written in each real on-disk format:
what they read, and the whole-file refusals (counts, label range, shapes) naming file and mismatch.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from c2p.corpora import CorpusError, ErrorRecord, open_corpus
from c2p.corpora.modelnet_h5 import write_modelnet_h5
from c2p.corpora.openshape import write_openshape_lvis, write_openshape_modelnet40
from c2p.corpora.scanobjectnn import SCANOBJECTNN_CLASSES, write_scanobjectnn

NAMES = ["airplane", "bathtub", "bed", "bench"]


def _clouds(n: int, p: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, p, 3)).astype(np.float32)


def _ok(corpus) -> list:
    return [r for r in corpus.records() if not isinstance(r, ErrorRecord)]


# ----------------------------------------------------------------------------- ModelNet40 HDF5


def test_modelnet_h5_reads_the_release_layout_across_files(tmp_path):
    clouds, labels = _clouds(5), np.array([3, 0, 1, 1, 2])
    write_modelnet_h5(tmp_path, "test", clouds, labels, NAMES, per_file=3)  # two files, listed in test_files.txt
    write_modelnet_h5(tmp_path, "train", clouds[:2], labels[:2], NAMES)
    assert (tmp_path / "test_files.txt").read_text().splitlines() == [
        "data/modelnet40_ply_hdf5_2048/ply_data_test0.h5", "data/modelnet40_ply_hdf5_2048/ply_data_test1.h5"]
    with h5py.File(tmp_path / "ply_data_test0.h5") as f:
        assert f["label"].shape == (3, 1) and f["data"].dtype == np.float32  # as the release stores them
    c = open_corpus("modelnet_h5", tmp_path, "test")
    assert c.labels == sorted(NAMES) and c.up_axis == "y"
    recs = _ok(c)
    assert [r.ref.uid for r in recs] == [f"test-{i:05d}" for i in range(5)]
    assert [r.ref.label for r in recs] == [NAMES[i] for i in labels]
    assert recs[4].ref.source.endswith("ply_data_test1.h5[1]")
    np.testing.assert_array_equal(recs[4].points, clouds[4])
    assert len(open_corpus("modelnet_h5", tmp_path, "all").list()[0]) == 7


def test_modelnet_h5_refuses_files_whose_arrays_disagree(tmp_path):
    write_modelnet_h5(tmp_path, "test", _clouds(4), np.array([0, 1, 2, 3]), NAMES)
    path = tmp_path / "ply_data_test0.h5"
    with h5py.File(path, "r+") as f:
        del f["label"]
        f["label"] = np.zeros((3, 1), dtype=np.uint8)
    with pytest.raises(CorpusError, match=r"ply_data_test0.h5: 4 point clouds but 3 labels"):
        open_corpus("modelnet_h5", tmp_path, "test")
    with h5py.File(path, "r+") as f:
        del f["label"]
        f["label"] = np.array([[0], [1], [7], [3]], dtype=np.uint8)
    with pytest.raises(CorpusError, match=r"ply_data_test0.h5: labels in \[0, 7\]; expected 0..3 \(the 4 classes of .*shape_names.txt\)"):
        open_corpus("modelnet_h5", tmp_path, "test")
    with h5py.File(path, "r+") as f:
        del f["data"]
        f["data"] = np.zeros((4, 16, 2), dtype=np.float32)
    with pytest.raises(CorpusError, match=r"ply_data_test0.h5: data of shape \[4, 16, 2\]; expected \[N,P,3\]"):
        open_corpus("modelnet_h5", tmp_path, "test")
    path.unlink()
    with pytest.raises(CorpusError, match=r"test_files.txt: lists \['ply_data_test0.h5'\], not found"):
        open_corpus("modelnet_h5", tmp_path, "test")


# ----------------------------------------------------------------------------- ScanObjectNN variants


def test_scanobjectnn_variants_by_name(tmp_path):
    write_scanobjectnn(tmp_path, "OBJ_ONLY", "test", _clouds(3), np.array([0, 14, 5]))
    write_scanobjectnn(tmp_path, "PB_T50_RS", "test", _clouds(2, seed=1), np.array([1, 2]))
    assert (tmp_path / "main_split_nobg" / "test_objectdataset.h5").is_file()
    assert (tmp_path / "main_split" / "test_objectdataset_augmentedrot_scale75.h5").is_file()
    obj = open_corpus("scanobjectnn_release", tmp_path, "test", variant="OBJ_ONLY")
    assert obj.labels == sorted(SCANOBJECTNN_CLASSES)  # no shape_names.txt: the release's 15 classes
    assert [r.ref.label for r in _ok(obj)] == ["bag", "toilet", "desk"]
    pb = _ok(open_corpus("scanobjectnn_release", tmp_path / "main_split", "test", variant="PB_T50_RS"))  # a split folder as root
    assert [r.ref.label for r in pb] == ["bin", "box"]
    with pytest.raises(CorpusError, match=r"variant 'PB_T99'; expected one of"):
        open_corpus("scanobjectnn_release", tmp_path, "test", variant="PB_T99")
    with pytest.raises(CorpusError, match=r"training_objectdataset.h5: missing file"):
        open_corpus("scanobjectnn_release", tmp_path, "train", variant="OBJ_ONLY")


def test_scanobjectnn_release_refuses_mismatched_arrays_and_reads_own_class_names(tmp_path):
    path = write_scanobjectnn(tmp_path, "OBJ_BG", "test", _clouds(3), np.array([0, 1, 3]), shape_names=NAMES)
    assert (tmp_path / "main_split" / "shape_names.txt").read_text().split() == NAMES
    assert [r.ref.label for r in _ok(open_corpus("scanobjectnn_release", tmp_path, "test", variant="OBJ_BG"))] == ["airplane", "bathtub", "bench"]
    with h5py.File(path, "r+") as f:
        del f["label"]
        f["label"] = np.array([0, 4, 1])
    with pytest.raises(CorpusError, match=r"test_objectdataset.h5: labels in \[0, 4\]; expected 0..3"):
        open_corpus("scanobjectnn_release", tmp_path, "test", variant="OBJ_BG")
    with h5py.File(path, "r+") as f:
        del f["label"]
        f["label"] = np.array([0, 1])
    with pytest.raises(CorpusError, match=r"test_objectdataset.h5: 3 point clouds but 2 labels"):
        open_corpus("scanobjectnn_release", tmp_path, "test", variant="OBJ_BG")


# ----------------------------------------------------------------------------- OpenShape's ModelNet40


def test_openshape_modelnet40_reads_test_pc_and_category_order(tmp_path):
    clouds = list(_clouds(3, p=40))
    base = write_openshape_modelnet40(tmp_path, ["bed_0516", "airplane_0627", "bed_0517"], ["bed", "airplane", "bed"], clouds)
    c = open_corpus("openshape_modelnet40", tmp_path, "test")  # meta_data as root finds modelnet40/
    assert c.up_axis == "z" and c.class_order == ["airplane", "bed"]
    recs = _ok(c)
    assert [r.ref.label for r in recs] == ["bed", "airplane", "bed"] and c.names[1] == "airplane_0627"
    np.testing.assert_array_equal(recs[2].points, clouds[2])
    # OpenShape's label order is cat_name_pt_feat.npy's key order
    np.save(base / "cat_name_pt_feat.npy", np.array({"bed": {}, "bench": {}, "airplane": {}}, dtype=object), allow_pickle=True)
    assert open_corpus("openshape_modelnet40", base, "test").class_order == ["bed", "bench", "airplane"]
    with pytest.raises(CorpusError, match="has only"):
        open_corpus("openshape_modelnet40", base, "train")


def test_openshape_modelnet40_refusals(tmp_path):
    base = write_openshape_modelnet40(tmp_path, ["a_1", "b_1"], ["a", "b"], list(_clouds(2, p=10)))
    (base / "test_split.json").write_text(json.dumps([{"name": "a_1", "category": "a"}] * 3))
    with pytest.raises(CorpusError, match=r"test_pc.npy: 2 point clouds but test_split.json has 3 entries"):
        open_corpus("openshape_modelnet40", base, "test")
    (base / "test_split.json").write_text(json.dumps([{"name": "a_1", "category": "a"}, {"name": "b_1"}]))
    with pytest.raises(CorpusError, match=r"test_split.json: entry 1 is .*expected an object with non-empty \['name', 'category'\]"):
        open_corpus("openshape_modelnet40", base, "test")
    (base / "test_split.json").write_text(json.dumps([{"name": "a_1", "category": "a"}, {"name": "b_1", "category": "b"}]))
    pcs = np.load(base / "test_pc.npy", allow_pickle=True)
    pcs[1] = {"xyz": pcs[1]["xyz"], "rgb": pcs[1]["rgb"][:7]}
    np.save(base / "test_pc.npy", pcs, allow_pickle=True)
    with pytest.raises(CorpusError, match=r"test_pc.npy\[1\]: xyz \[10, 3\] and rgb \[7, 3\] disagree"):
        open_corpus("openshape_modelnet40", base, "test")
    np.save(base / "cat_name_pt_feat.npy", np.array({"a": {}}, dtype=object), allow_pickle=True)
    with pytest.raises(CorpusError, match=r"categories \['b'\] are not in the category list of .*cat_name_pt_feat.npy"):
        open_corpus("openshape_modelnet40", base, "test")


# ----------------------------------------------------------------------------- OpenShape's Objaverse-LVIS


def test_openshape_lvis_reads_points_and_resolves_foreign_paths(tmp_path):
    clouds = list(_clouds(3, p=12))
    table = write_openshape_lvis(tmp_path, ["u1", "u2", "u3"], ["zebra", "apple", "zebra"], clouds)
    rows = json.loads(table.read_text())
    rows[0]["data_path"] = "/mnt/data/objaverse-processed/merged_for_training_final/Objaverse/000-001/u1.npy"  # the authors' disk
    rows[2]["data_path"] = "objaverse/gone.npy"
    table.write_text(json.dumps(rows))
    c = open_corpus("openshape_lvis", tmp_path, "test")
    assert c.labels == ["apple", "zebra"] and c.up_axis == "z"
    refs, errors = c.list()
    assert [r.uid for r in refs] == ["u1", "u2"] and refs[0].source == str(tmp_path / "objaverse" / "u1.npy")
    assert [e.uid for e in errors] == ["u3"] and errors[0].reason == "missing file"
    np.testing.assert_array_equal(c.load(refs[0]).points, clouds[0])
    np.save(tmp_path / "objaverse" / "u2.npy", np.array({"xyz": clouds[1], "rgb": np.zeros((5, 3))}, dtype=object), allow_pickle=True)
    with pytest.raises(CorpusError, match=r"u2.npy: xyz \[12, 3\] and rgb \[5, 3\] disagree"):
        c.load(refs[1])
    rows[1]["uid"] = "u1"
    table.write_text(json.dumps(rows))
    with pytest.raises(CorpusError, match=r"lvis.json: entry 1: uid 'u1' repeated"):
        open_corpus("openshape_lvis", tmp_path, "test")
