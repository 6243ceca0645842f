"""Downstream evaluation end to end on a rendered synthetic corpus: zero-shot with a tiny CLIP,
GDPA few-shot / supervised training and sweeps (locally and as a SLURM job array), the
evaluate and finetune commands and their refusals.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from testdata import downstream_config, write_modelnet_shapes

from c2p.eval.errors import EvalError
from c2p.eval.zeroshot import evaluate_zeroshot

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]
ZS_TINY, FS_TINY = str(REPO / "configs/downstream/zeroshot_tiny.yaml"), str(REPO / "configs/downstream/fewshot_tiny.yaml")


# ----------------------------------------------------------------------------- fixtures


# ----------------------------------------------------------------------------- zero-shot


def test_zeroshot_with_tiny_clip_writes_a_report(tmp_path):
    root = write_modelnet_shapes(tmp_path / "mn", per_class=1)
    cfg = downstream_config(tmp_path, root, "modelnet", "encoder.model=c2p-tiny", "data.points=256", "encoder.views=6", "data.rotate_zup=true")
    res = evaluate_zeroshot(cfg)
    assert res["encoder"] == "clip_visual" and res["image_size"] == 32
    assert 0.0 <= res["metrics"]["top1"] <= 1.0 and res["metrics"]["n"] == 3
    assert Path(res["report"]["json"]).is_file()


# ----------------------------------------------------------------------------- metrics


# ----------------------------------------------------------------------------- bad inputs


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
    return downstream_config(
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
    import shutil

    from c2p.cli.evaluate import main as evaluate_main
    from c2p.cli.finetune import main as finetune_main

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


# ----------------------------------------------------------------------------- held-out retrieval shards


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
