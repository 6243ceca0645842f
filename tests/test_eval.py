"""Downstream evaluation: zero-shot, few-shot / supervised GDPA training, reports, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from c2p.config import load_config
from c2p.config.downstream import DownstreamConfig
from c2p.eval.errors import EvalError
from c2p.eval.features import ViewFeatureCache, ViewSetting
from c2p.eval.report import classification_metrics
from c2p.eval.splits import load_split
from c2p.eval.towers import load_depth_tower
from c2p.eval.zeroshot import evaluate_zeroshot, zeroshot_logits

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
ZS_TINY, FS_TINY = str(REPO / "configs/downstream/zeroshot_tiny.yaml"), str(REPO / "configs/downstream/fewshot_tiny.yaml")


# ----------------------------------------------------------------------------- fixtures


def _write_off(path: Path, mesh) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    v, f = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    lines = ["OFF", f"{len(v)} {len(f)} 0"] + [f"{a:.6f} {b:.6f} {c:.6f}" for a, b, c in v] + [f"3 {a} {b} {c}" for a, b, c in f]
    path.write_text("\n".join(lines) + "\n")


def _modelnet_shapes(root: Path, per_class: int, splits=("test",)) -> Path:
    """A ModelNet-layout corpus of three hand-built shapes: ball (sphere), rod (long thin box
    along z), plate (flat square). Sizes vary a little so no two objects are the same."""
    import trimesh

    for split in splits:
        for i in range(per_class):
            s = 1.0 + 0.1 * i
            shapes = {
                "ball": trimesh.creation.icosphere(subdivisions=2, radius=s),
                "rod": trimesh.creation.box(extents=(0.08 * s, 0.08 * s, 2.0 * s)),
                "plate": trimesh.creation.box(extents=(1.5 * s, 1.5 * s, 0.03)),
            }
            for name, mesh in shapes.items():
                _write_off(root / name / split / f"{name}_{split}_{i:04d}.off", mesh)
    return root


class CoverageTower(nn.Module):
    """A visual tower whose output is known: feature = [covered fraction of the image, 0.3].

    A pixel is covered when its first channel is below the background value: the depth
    normaliser maps covered pixels into [0, 200/255] and the background to 1.0 before CLIP's
    mean/std.
    """

    def __init__(self):
        super().__init__()
        from c2p.imagenorm import CLIP_MEAN, CLIP_STD

        self.background = (1.0 - float(CLIP_MEAN[0])) / float(CLIP_STD[0])
        self.dummy = nn.Parameter(torch.zeros(1))  # so module_hash / .to() have state

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        covered = (images[:, 0] < self.background - 1e-3).float().mean(dim=(1, 2))
        return torch.stack([covered, torch.full_like(covered, 0.3)], dim=1) + 0 * self.dummy


def _cfg(tmp_path: Path, root: Path, corpus: str, *overrides: str) -> DownstreamConfig:
    return load_config(
        DownstreamConfig,
        None,
        [f"data.root={root}", f"data.corpus={corpus}", f"run.dir={tmp_path / 'runs'}", "run.name=t", "encoder.device=cpu", *overrides],
    )


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
    root = _modelnet_shapes(tmp_path / "mn", per_class=2)
    cfg = _cfg(tmp_path, root, "modelnet", "data.rotate_zup=true", "data.points=512", "encoder.image_size=32", "encoder.views=6", "encoder.radius=0.08")
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


def test_zeroshot_with_tiny_clip_writes_a_report(tmp_path):
    root = _modelnet_shapes(tmp_path / "mn", per_class=1)
    cfg = _cfg(tmp_path, root, "modelnet", "encoder.model=c2p-tiny", "data.points=256", "encoder.views=6", "data.rotate_zup=true")
    res = evaluate_zeroshot(cfg)
    assert res["encoder"] == "clip_visual" and res["image_size"] == 32
    assert 0.0 <= res["metrics"]["top1"] <= 1.0 and res["metrics"]["n"] == 3
    assert Path(res["report"]["json"]).is_file()


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
    root = _modelnet_shapes(tmp_path / "mn", per_class=1)
    cfg = _cfg(tmp_path, root, "modelnet", "data.classes=[ball,rod,cube]")
    with pytest.raises(EvalError, match=r"labels not in data.classes: \['plate'\].*not in the corpus: \['cube'\]"):
        load_split(cfg.data, "test")


def test_class_list_in_another_order_is_remapped(tmp_path):
    root = _modelnet_shapes(tmp_path / "mn", per_class=1)
    cfg = _cfg(tmp_path, root, "modelnet", "data.classes=[rod,ball,plate]", "data.points=64")
    split = load_split(cfg.data, "test")
    assert split.classes == ["rod", "ball", "plate"]
    assert [split.classes[i] for i in split.labels.tolist()] == [u.split("_")[0] for u in split.uids]


def test_empty_split_is_named(tmp_path):
    root = _modelnet_shapes(tmp_path / "mn", per_class=1, splits=("train",))
    for c in ("ball", "plate", "rod"):
        (root / c / "test").mkdir()
    cfg = _cfg(tmp_path, root, "modelnet")
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


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Synthetic corpus (14 classes, 8 train + 4 test per class, ShapeNet layout) and an
    'exported' depth tower: a c2p-tiny visual tower of another seed saved as safetensors."""
    from safetensors.torch import save_file

    from c2p.corpora.synthetic import write_synthetic
    from c2p.models.clip import create_clip

    base = tmp_path_factory.mktemp("synthetic")
    root = write_synthetic(base / "corpus", layout="shapenet", per_class=8, seed=0, test_per_class=4)
    torch.manual_seed(123)
    visual = create_clip("c2p-tiny").visual
    tower = base / "depth_tower.safetensors"
    save_file({k: v.contiguous() for k, v in visual.state_dict().items()}, str(tower))
    return root, tower


def _fs_cfg(tmp_path, synthetic, *overrides):
    root, tower = synthetic
    return _cfg(
        tmp_path, root, "synthetic", "encoder.model=c2p-tiny", f"encoder.depth_tower={tower}", "encoder.views=6",
        "data.points=512", f"encoder.cache_dir={tmp_path / 'cache'}", *overrides,
    )


def test_gdpa_trains_well_above_chance_on_the_synthetic_corpus(tmp_path, synthetic):
    from c2p.eval.fewshot import run_sweep

    cfg = _fs_cfg(tmp_path, synthetic, "finetune.task=supervised", "finetune.epochs=100", "finetune.seeds=[0]")
    res = run_sweep(cfg)
    (run,) = res["runs"]
    assert run["train_objects"] == 14 * 8 and run["metrics"]["n"] == 14 * 4
    assert run["metrics"]["top1"] > 0.35  # chance 1/14 ≈ 0.07; measured 0.52
    assert run["final_train_acc"] > 0.8
    assert abs(run["gate"] - 0.5) > 0.01  # the gate moved from its initial 0.5
    out = tmp_path / "runs" / "t" / "eval"
    assert (out / "supervised" / "seed0" / "results.json").is_file() and (out / "supervised" / "sweep.md").is_file()
    saved = json.loads((out / "supervised" / "seed0" / "results.json").read_text())
    assert len(saved["checkpoint_hash"]) == 16 and saved["config"]["adapter"]["paths"] == "both"
    assert set(saved["metrics"]["per_class_acc"]) == set(saved["classes"]) and len(saved["classes"]) == 14


@pytest.mark.parametrize("paths", ["clip", "depth"])
def test_either_path_alone_trains(tmp_path, synthetic, paths):
    from c2p.eval.fewshot import run_fewshot

    cfg = _fs_cfg(tmp_path, synthetic, f"adapter.paths={paths}", "finetune.epochs=3")
    res = run_fewshot(cfg, shots=2, seed=0)
    assert res["paths"] == paths and res["gate"] == (1.0 if paths == "clip" else 0.0)
    assert res["train_objects"] == 28
    state = torch.load(tmp_path / "runs" / "t" / "eval" / "fewshot" / "k2" / "seed0" / "adapter.pt", weights_only=True)
    assert {k.split(".")[0] for k in state} == {f"{paths}_path", "text_features"}


def test_fewshot_sweep_table_plot_and_reproducibility(tmp_path, synthetic):
    from c2p.eval.fewshot import collect_sweep, run_sweep

    def sweep(name):
        cfg = _fs_cfg(tmp_path, synthetic, f"run.dir={tmp_path / name}", "finetune.shots=[1,2]", "finetune.seeds=[0,1]", "finetune.epochs=5",
                      f"encoder.cache_dir={tmp_path / name / 'cache'}")
        return cfg, run_sweep(cfg)

    cfg, a = sweep("a")
    _, b = sweep("b")
    out_a, out_b = tmp_path / "a" / "t" / "eval" / "fewshot", tmp_path / "b" / "t" / "eval" / "fewshot"
    assert [r["shots"] for r in a["rows"]] == [1, 2] and all(r["seeds"] == [0, 1] for r in a["rows"])
    assert [(r["shots"], r["seed"]) for r in a["runs"]] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    table = (out_a / "sweep.md").read_text()
    assert "| 1 | 2 |" in table and "| 2 | 2 |" in table and "±" in table
    assert (out_a / "accuracy_vs_k.png").read_bytes()[:4] == b"\x89PNG"
    # same seeds, features recomputed from scratch: identical results, table and plot
    assert [r["metrics"] for r in a["runs"]] == [r["metrics"] for r in b["runs"]]
    assert table == (out_b / "sweep.md").read_text()
    assert (out_a / "accuracy_vs_k.png").read_bytes() == (out_b / "accuracy_vs_k.png").read_bytes()
    for k in (1, 2):
        for s in (0, 1):
            ra = json.loads((out_a / f"k{k}" / f"seed{s}" / "results.json").read_text())
            rb = json.loads((out_b / f"k{k}" / f"seed{s}" / "results.json").read_text())
            assert ra["metrics"] == rb["metrics"] and ra["gate"] == rb["gate"]
    # different seeds draw different shots
    assert a["runs"][0]["metrics"] != a["runs"][1]["metrics"]
    # the table can be rebuilt from the per-task results (what a job array does at the end)
    assert collect_sweep(cfg)["rows"] == a["rows"]


def test_fewshot_bad_inputs(tmp_path, synthetic):
    from safetensors.torch import save_file

    from c2p.eval.fewshot import collect_sweep, run_fewshot
    from c2p.models.clip import create_clip

    cfg = _fs_cfg(tmp_path, synthetic, "data.classes=[airplane,bed,banana]")
    with pytest.raises(EvalError, match=r"data.classes does not match.*not in the corpus: \['banana'\]"):
        run_fewshot(cfg, 1, 0)
    big = tmp_path / "small_tower.safetensors"
    save_file({k: v.contiguous() for k, v in create_clip("c2p-small").visual.state_dict().items()}, str(big))
    cfg = _fs_cfg(tmp_path, synthetic, f"encoder.depth_tower={big}")
    with pytest.raises(EvalError, match=r"small_tower.safetensors is a checkpoint of another model size.*in model 'c2p-tiny'"):
        run_fewshot(cfg, 1, 0)
    cfg = _fs_cfg(tmp_path, synthetic, "encoder.depth_tower=")
    with pytest.raises(EvalError, match=r"adapter.paths='both' needs the CLIP2Point depth tower"):
        run_fewshot(cfg, 1, 0)
    cfg = _fs_cfg(tmp_path, synthetic, "finetune.shots=[9]")
    with pytest.raises(EvalError, match=r"K=9: class index 0 has 8 training objects"):
        run_fewshot(cfg, 9, 0)
    with pytest.raises(EvalError, match=r"no results.json for \(K, seed\) \[\(9, 0\)\]"):
        collect_sweep(cfg)


# ----------------------------------------------------------------------------- launchers (local path)


def test_launch_evaluate_and_finetune_locally(tmp_path, synthetic, capsys):
    from c2p.cli.evaluate import main as evaluate_main
    from c2p.cli.finetune import main as finetune_main

    import shutil

    root, tower = synthetic
    # a pre-training run as c2p-pretrain leaves it: export/depth_tower.safetensors + depth_tower.json
    pre = tmp_path / "runs" / "pre"
    (pre / "export").mkdir(parents=True)
    shutil.copy(tower, pre / "export" / "depth_tower.safetensors")
    (pre / "export" / "depth_tower.json").write_text(json.dumps({"model": "c2p-tiny", "step": 3}))
    rc = evaluate_main(["--task", "zeroshot", "--config", ZS_TINY, "--run", str(pre), "--json",
                        "--root", str(root), "--cluster", "local"])
    assert rc == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["encoder"] == "depth_tower" and line["metrics"]["n"] == 14 * 4
    assert (pre / "eval" / "zeroshot" / "results.json").is_file()
    assert evaluate_main(["--config", ZS_TINY, "--run", str(tmp_path), "--root", str(root)]) == 2
    assert "export/depth_tower.safetensors" in capsys.readouterr().err

    common = ["--root", str(root), "--cluster", "local", f"run.dir={tmp_path}", "encoder.device=cpu"]

    rc = finetune_main(["--task", "fewshot", "--shots", "1", "--seed", "0", "1", "--config", FS_TINY,
                        "--depth-tower", str(tower), "finetune.epochs=2", *common])
    assert rc == 0
    assert "| 1 | 2 |" in capsys.readouterr().out
    sweep = tmp_path / "fewshot-tiny" / "eval" / "fewshot"
    assert (sweep / "sweep.md").is_file() and (sweep / "accuracy_vs_k.png").is_file() and (sweep / "k1" / "seed1" / "results.json").is_file()
    # the same sweep as a SLURM job array: one element per (K, seed), nothing submitted on a dry run
    rc = finetune_main(["--task", "fewshot", "--shots", "1", "2", "--seed", "0", "1", "--config", FS_TINY,
                        "--depth-tower", str(tower), *common[:2], "--cluster", "slurm", "--dry-run", f"run.dir={tmp_path / 'dry'}"])
    out = capsys.readouterr().out
    assert rc == 0 and "job array of 4 element(s)" in out and not (tmp_path / "dry").exists()


def test_launchers_refuse_bad_inputs_before_running(tmp_path, synthetic, capsys):
    from c2p.cli.evaluate import main as evaluate_main
    from c2p.cli.finetune import main as finetune_main

    root, tower = synthetic
    common = ["--root", str(root), "--cluster", "local", f"run.dir={tmp_path}"]
    assert finetune_main(["--shots", "0", "--config", FS_TINY, "--depth-tower", str(tower), *common]) == 2
    assert "finetune.shots" in capsys.readouterr().err
    assert evaluate_main(["--depth-tower", str(tmp_path / "missing.safetensors"), "--config", ZS_TINY, *common]) == 2
    assert "encoder.depth_tower" in capsys.readouterr().err
    assert finetune_main(["--config", FS_TINY, *common]) == 2  # paths=both without a depth tower
    assert "encoder.depth_tower" in capsys.readouterr().err
    assert evaluate_main(["--config", ZS_TINY, "data.classes=[chair,sofa]", *common]) == 2
    assert "data.classes does not match" in capsys.readouterr().err
    assert not (tmp_path / "zeroshot-tiny").exists() and not (tmp_path / "fewshot-tiny").exists()


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
    with pytest.raises(EvalError, match="neither points nor a mesh"):
        object_points(rec("n"), 8)


# ----------------------------------------------------------------------------- held-out retrieval shards


def test_load_heldout_reads_every_shard_in_key_order_and_refuses_a_truncated_one(tmp_path):
    from c2p.eval.retrieval import load_heldout
    from shardkit import object_sample, write_shard_dir

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


@pytest.mark.slow
@pytest.mark.slurm
def test_fewshot_sweep_as_a_slurm_job_array(tmp_path, synthetic, slurm_env, capsys):
    """The sweep goes out as ONE job array on the local SLURM (the ``slurm_env`` fixture);
    each element writes its results.json and the launcher builds the table from them."""
    from c2p.cli.finetune import main as finetune_main

    root, tower = synthetic
    rc = finetune_main(["--cluster", "slurm", "--task", "fewshot", "--shots", "1", "--seed", "0", "1", "--time", "10",
                        "--config", FS_TINY, "--root", str(root), "--depth-tower", str(tower),
                        f"run.dir={tmp_path}", "finetune.epochs=2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "submitted job array" in out and "| 1 | 2 |" in out
    sweep = tmp_path / "fewshot-tiny" / "eval" / "fewshot"
    assert {p.parent.name for p in sweep.glob("k1/seed*/results.json")} == {"seed0", "seed1"}
    assert len(list((sweep / "logs").iterdir())) >= 2  # one log folder per array element
    assert (sweep / "sweep.md").is_file() and (sweep / "accuracy_vs_k.png").is_file()
