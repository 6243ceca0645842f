"""Downstream evaluation without training: zero-shot logits and accuracy on hand-built cases, the
view-feature cache, metrics, splits and their refusals, point sampling, held-out shards.
Adapter training and the commands end to end: tests/integration/test_eval_training.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from testdata import CoverageTower, downstream_config, write_modelnet_shapes

from c2p.eval.errors import EvalError
from c2p.eval.features import ViewFeatureCache, ViewSetting
from c2p.eval.report import classification_metrics
from c2p.eval.splits import load_split
from c2p.eval.towers import load_depth_tower
from c2p.eval.zeroshot import evaluate_zeroshot, zeroshot_logits

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]
ZS_TINY, FS_TINY = str(REPO / "configs/downstream/zeroshot_tiny.yaml"), str(REPO / "configs/downstream/fewshot_tiny.yaml")


# ----------------------------------------------------------------------------- fixtures


# ----------------------------------------------------------------------------- zero-shot


def test_zeroshot_logits_sum_cosines_over_views():
    views = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # one object, two views
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    got = zeroshot_logits(views, text)
    s = 2**-0.5
    assert torch.allclose(got, torch.tensor([[1.0, 1.0, 2 * s]]))


def test_zeroshot_hand_built_case_gives_the_expected_accuracy(tmp_path):
    """ball → text [1,0], rod → [0,1], plate → [-1,-1]: with a tower whose features are
    [coverage, 0.3] >= 0, a ball (coverage ~0.8 in every view) is always 'ball', a rod
    (coverage < 0.05) always 'rod', and a plate can never be 'plate'. Top-1 is exactly 2/3."""
    root = write_modelnet_shapes(tmp_path / "mn", per_class=2)
    cfg = downstream_config(tmp_path, root, "modelnet", "data.rotate_zup=true", "data.points=512", "encoder.image_size=32", "encoder.views=6", "encoder.radius=0.08")
    classes = ["ball", "plate", "rod"]  # the corpus's sorted labels
    text = torch.tensor([[1.0, 0.0], [-1.0, -1.0], [0.0, 1.0]])
    res = evaluate_zeroshot(cfg, visual=CoverageTower(), text_features=text)
    m = res["metrics"]
    assert m["n"] == 6
    assert m["top1"] == pytest.approx(4 / 6)
    assert m["per_class_acc"] == {"ball": 1.0, "plate": 0.0, "rod": 1.0}
    assert m["mean_class_acc"] == pytest.approx(2 / 3)
    assert m["top5"] == 1.0 and m["top5_k"] == 3
    out = tmp_path / "runs" / "t" / "eval" / "zeroshot"
    saved = json.loads((out / "results.json").read_text())
    assert saved["metrics"]["top1"] == pytest.approx(4 / 6) and saved["classes"] == classes
    assert np.asarray(saved["confusion"]).trace() == 4
    assert (out / "confusion.png").stat().st_size > 0 and "| ball | 100.00 |" in (out / "results.md").read_text()
    # the second run reads the cached view features and gives the same answer
    again = evaluate_zeroshot(cfg, visual=CoverageTower(), text_features=text)
    assert again["metrics"] == m


def test_feature_cache_hits_and_keys(tmp_path):
    pts = torch.randn(3, 64, 3)
    pts = pts / pts.norm(dim=-1).amax()
    cache = ViewFeatureCache(tmp_path)
    setting = ViewSetting(views="6", image_size=16)
    tower = CoverageTower()
    a = cache.features(pts, tower, setting)
    b = cache.features(pts, tower, setting)
    assert cache.misses == 1 and cache.hits == 1 and torch.equal(a, b) and a.shape == (3, 6, 2)
    cache.features(pts, tower, ViewSetting(views="10", image_size=16))  # another setting → another entry
    cache.features(pts + 0.01, tower, setting)  # other points → another entry
    assert cache.misses == 3 and len(list(tmp_path.glob("*.pt"))) == 3


# ----------------------------------------------------------------------------- metrics


def test_classification_metrics():
    logits = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0]])
    labels = torch.tensor([0, 1, 1, 1])
    m, cm = classification_metrics(logits, labels, ["a", "b", "c"])
    assert m["top1"] == 0.5 and m["per_class_acc"] == {"a": 1.0, "b": 1 / 3, "c": None}
    assert m["mean_class_acc"] == pytest.approx((1 + 1 / 3) / 2)
    assert cm.tolist() == [[1, 0, 0], [1, 1, 1], [0, 0, 0]]


# ----------------------------------------------------------------------------- bad inputs


def test_class_list_not_matching_the_corpus_is_named(tmp_path):
    root = write_modelnet_shapes(tmp_path / "mn", per_class=1)
    cfg = downstream_config(tmp_path, root, "modelnet", "data.classes=[ball,rod,cube]")
    with pytest.raises(EvalError, match=r"labels not in data.classes: \['plate'\].*not in the corpus: \['cube'\]"):
        load_split(cfg.data, "test")


def test_class_list_in_another_order_is_remapped(tmp_path):
    root = write_modelnet_shapes(tmp_path / "mn", per_class=1)
    cfg = downstream_config(tmp_path, root, "modelnet", "data.classes=[rod,ball,plate]", "data.points=64")
    split = load_split(cfg.data, "test")
    assert split.classes == ["rod", "ball", "plate"]
    assert [split.classes[i] for i in split.labels.tolist()] == [u.split("_")[0] for u in split.uids]


def test_empty_split_is_named(tmp_path):
    root = write_modelnet_shapes(tmp_path / "mn", per_class=1, splits=("train",))
    for c in ("ball", "plate", "rod"):
        (root / c / "test").mkdir()
    cfg = downstream_config(tmp_path, root, "modelnet")
    with pytest.raises(EvalError, match=r"split 'test' is empty"):
        load_split(cfg.data, "test")


def test_depth_tower_of_another_model_size_is_named(tmp_path):
    from safetensors.torch import save_file

    from c2p.models.clip import create_clip

    small = create_clip("c2p-small").visual
    path = tmp_path / "depth_tower.safetensors"
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(path))
    tiny = create_clip("c2p-tiny").visual
    with pytest.raises(EvalError, match=r"depth_tower.safetensors is a checkpoint of another model size: tensor '.*' has shape"):
        load_depth_tower(path, tiny, "c2p-tiny")
    with pytest.raises(EvalError, match="does not exist"):
        load_depth_tower(tmp_path / "nope.safetensors", tiny, "c2p-tiny")
    # same shapes, but the export records another model name (as export_depth_tower writes it)
    named = tmp_path / "named.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(named), metadata={"model": "c2p-tiny-quickgelu", "step": "7"})
    with pytest.raises(EvalError, match=r"exported for model 'c2p-tiny-quickgelu'.*encoder.model is 'c2p-tiny'"):
        load_depth_tower(named, tiny, "c2p-tiny")
    loaded = load_depth_tower(named, tiny, "")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), tiny.state_dict().values()))


# ----------------------------------------------------------------------------- few-shot / supervised GDPA


# ----------------------------------------------------------------------------- launchers (local path)


def test_object_points_from_points_meshes_and_scenes():
    import trimesh

    from c2p.corpora import ObjectRecord, ObjectRef
    from c2p.eval.splits import object_points

    def rec(uid, mesh=None, points=None):
        return ObjectRecord(ObjectRef("c", uid, "a", 0, "src"), mesh, points)

    stored = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    sub = object_points(rec("p", points=stored), 20)
    assert sub.shape == (20, 3) and np.array_equal(sub, object_points(rec("p", points=stored), 20))  # same uid, same draw
    assert set(map(tuple, sub)) <= set(map(tuple, stored))
    assert object_points(rec("p", points=stored), 80).shape == (80, 3)  # fewer stored than asked: repeats
    scene = trimesh.Scene([trimesh.creation.box(), trimesh.creation.icosphere()])
    assert object_points(rec("s", mesh=scene), 64).shape == (64, 3)
    placed = trimesh.Scene()  # one unit box placed at x = 5 by its node: points lie where the scene puts it
    placed.add_geometry(trimesh.creation.box(), transform=trimesh.transformations.translation_matrix([5.0, 0.0, 0.0]))
    assert np.all(np.abs(object_points(rec("t", mesh=placed), 64)[:, 0] - 5.0) <= 0.5 + 1e-5)
    with pytest.raises(EvalError, match="neither points nor a mesh"):
        object_points(rec("n"), 8)


# ----------------------------------------------------------------------------- held-out retrieval shards


def test_load_heldout_reads_every_shard_in_key_order_and_refuses_a_truncated_one(tmp_path):
    from testdata import object_sample, write_shard_dir

    from c2p.eval.retrieval import load_heldout

    rng = np.random.default_rng(0)
    views = [[0.0, 0.0, 1.0], [90.0, 0.0, 1.0]]

    def sample(uid: str) -> dict:
        rgb = [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in views]
        return object_sample("t", uid, "a", 0, rng.uniform(-0.5, 0.5, (32, 3)), views=views, rgb=rgb,
                             depth=[np.ones((8, 8))] * 2, imgfeat={"tiny": np.zeros((2, 4))}, caption="a thing", source="src")

    write_shard_dir(tmp_path, [[sample("o2"), sample("o0")], [sample("o1")]], corpus="t", labels=["a"], index=False)
    data = load_heldout(tmp_path, points=16, seed=0)
    assert data.keys == ["t-o0", "t-o1", "t-o2"]
    assert data.points.shape == (3, 16, 3) and data.rgb.shape == (3, 2, 8, 8, 3) and data.views.shape == (3, 2, 3)
    assert data.views[0].tolist() == views
    whole = (tmp_path / "shard-000001.tar").read_bytes()
    (tmp_path / "shard-000001.tar").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(RuntimeError, match=r"held-out shard .*shard-000001.tar: ReadError"):
        load_heldout(tmp_path, points=16)
    with pytest.raises(FileNotFoundError, match="no shard-"):
        load_heldout(tmp_path / "nothing")


# ----------------------------------------------------------------------------- SLURM job array (real local cluster)


