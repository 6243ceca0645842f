"""``--cluster local`` (submitit's LocalExecutor: real local processes whose ranks come from
c2p.cluster.env): a gloo rendezvous, a job array, and the tiny pre-training run then its export.
The same paths on a real SLURM are in test_slurm.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from testdata import tiny_overrides

from c2p.cluster import (
    ClusterOptions,
    ClusterTask,
    JobFailedError,
    collect,
    launch_array,
    submit,
)

REPO = Path(__file__).resolve().parents[2]

TINY = REPO / "configs" / "pretrain" / "tiny.yaml"

HELPERS = '''
import os

def allreduce(cfg):
    """A real gloo rendezvous over the variables c2p.cluster.env exported."""
    import torch
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method="env://")
    t = torch.tensor([float(int(os.environ["RANK"]) + 1)])
    dist.all_reduce(t)
    dist.destroy_process_group()
    keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    return dict({k: os.environ[k] for k in keys}, sum=float(t), tag=cfg["tag"])

def square(cfg):
    return {"x": cfg["x"], "y": cfg["x"] ** 2}

def fail_on_odd(cfg):
    if cfg["x"] % 2:
        raise ValueError(f"element x={cfg['x']} refuses odd numbers")
    return cfg["x"]
'''


@pytest.fixture
def helpers(tmp_path, monkeypatch) -> str:
    """A module of job bodies importable by the job processes (through PYTHONPATH)."""
    mod = tmp_path / "pylib"
    mod.mkdir()
    (mod / "launch_helpers.py").write_text(HELPERS)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(mod), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return "launch_helpers"


# ----------------------------------------------------------------------------- options


# ----------------------------------------------------------------------------- dry run and refusals


# ----------------------------------------------------------------------------- --cluster local


@pytest.mark.slow
def test_local_cluster_runs_two_ranks_that_rendezvous(tmp_path, helpers):
    opts = ClusterOptions(cluster="local", tasks_per_node=2, time=5)
    job = submit(ClusterTask(f"{helpers}:allreduce", {"tag": "t"}), opts, tmp_path / "run", config_text="tag: t\n")
    assert (tmp_path / "run" / "config.yaml").read_text() == "tag: t\n"  # written before the job started
    assert collect([job], timeout_s=180)[0]["sum"] == 3.0
    ranks = job.results()
    assert [r["RANK"] for r in ranks] == ["0", "1"] and [r["LOCAL_RANK"] for r in ranks] == ["0", "1"]
    assert {r["WORLD_SIZE"] for r in ranks} == {"2"} and len({r["MASTER_PORT"] for r in ranks}) == 1
    assert all(r["sum"] == 3.0 for r in ranks)  # 1 + 2: both ranks took part
    assert Path(job.paths.stderr).is_file() and str(tmp_path / "run" / "logs") in str(job.paths.stderr)


@pytest.mark.slow
def test_local_job_array_collects_every_element_in_order(tmp_path, helpers):
    opts = ClusterOptions(cluster="local", time=5)
    results = launch_array(f"{helpers}:square", [{"x": x} for x in (3, 1, 2)], opts, tmp_path / "sweep")
    assert [r["y"] for r in results] == [9, 1, 4]
    with pytest.raises(JobFailedError) as e:
        launch_array(f"{helpers}:fail_on_odd", [{"x": 0}, {"x": 1}], opts, tmp_path / "sweep2")
    msg = str(e.value)
    assert "1 of 2 job(s) failed" in msg and "[1]" in msg and "x=1 refuses odd numbers" in msg and "logs:" in msg


@pytest.mark.slow
def test_pretrain_cluster_local_two_ranks_then_export(tmp_path, tiny_shards):
    """The tiny pre-training run as 2 local ranks, through the same launcher as SLURM; then
    launch/export.py on its run directory."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("SLURM_CONF", None)
    r = subprocess.run(
        [sys.executable, "launch/pretrain.py", "--config", str(TINY), "--cluster", "local", "--tasks-per-node", "2",
         *tiny_overrides(tiny_shards, tmp_path / "runs", "loc", "train.steps=4", "checkpoint.every=2")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = tmp_path / "runs" / "loc"
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["step"] == 4 and summary["run_dir"] == str(run) and summary["resumed_from"] is None
    assert (run / "checkpoints" / "latest").read_text() == "step_00000004"
    log = re.search(r"logs\s+: (\S+) \(rank 0 stdout\)", r.stdout).group(1)
    assert Path(log).is_file() and Path(log).parent.parent == run / "logs"
    assert (run / "config.yaml").is_file()

    out = tmp_path / "tower"
    r = subprocess.run([sys.executable, "launch/export.py", str(run), "--cluster", "local", "--tag", "step_00000002", "--out", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "depth_tower.safetensors").is_file() and r.stdout.strip().endswith("depth_tower.safetensors")

    # The export records the depth maps it learnt from; evaluation at another radius is warned about.
    from c2p.eval.features import ViewSetting
    from c2p.eval.towers import pretraining_depth, warn_depth_mismatch

    tower = out / "depth_tower.safetensors"
    assert pretraining_depth(tower) == {"image_size": 32, "radius": 0.04, "dist": 1.0}
    assert json.loads((out / "depth_tower.json").read_text())["depth"]["radius"] == 0.04
    assert warn_depth_mismatch(tower, ViewSetting(views="10", image_size=32, radius=0.04, dist=1.0)) == []
    notes = warn_depth_mismatch(tower, ViewSetting(views="10", image_size=32, radius=0.02, dist=1.0))
    assert len(notes) == 1 and "encoder.radius=0.02" in notes[0] and "depth.radius=0.04" in notes[0]
