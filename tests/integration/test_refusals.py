"""Refusals and failure messages through real processes: the pre-training launcher script refusing
a crafted weights file before its run directory exists (and running none of its code), a render
whose feature-weights typo is refused before plan.json so the corrected run is not "another
plan", and a local job whose rank died reporting how, not a SLURM state."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from testdata import tiny_overrides

from c2p.cluster import ClusterOptions, ClusterTask, JobFailedError, collect, submit

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, OMP_NUM_THREADS="1")

CRAFT = """
import os, sys, torch
class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))
torch.save({"state_dict": RunsCode()}, sys.argv[1])
"""


@pytest.mark.slow
def test_pretrain_launcher_refuses_a_crafted_weights_file_before_anything_is_written(tiny_shards, tmp_path):
    weights, marker = tmp_path / "clip.pt", tmp_path / "CODE_RAN"
    subprocess.run([sys.executable, "-c", CRAFT, str(weights), str(marker)], check=True, env=ENV)
    cmd = [sys.executable, str(REPO / "launch" / "pretrain.py"), "--config", str(REPO / "configs" / "pretrain" / "tiny.yaml"),
           "--cluster", "local", *tiny_overrides(tiny_shards, tmp_path / "runs", "t", f"model.pretrained={weights}")]
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("error: config key 'model.pretrained'") and "refused to run code from the file" in p.stderr
    assert not (tmp_path / "runs").exists() and not marker.exists()


@pytest.mark.slow
def test_render_refuses_a_feature_weights_typo_before_plan_json_and_the_fix_renders(tmp_path):
    from c2p.corpora.synthetic import write_synthetic
    from c2p.models.clip import create_clip
    import torch

    root = write_synthetic(tmp_path / "synthetic", per_class=1, seed=0, classes=["sphere", "box"])
    torch.manual_seed(0)
    weights = tmp_path / "tiny.pt"
    torch.save(create_clip("c2p-tiny").state_dict(), weights)
    out = tmp_path / "shards"
    cmd = [sys.executable, str(REPO / "launch" / "render.py"), "--corpus", "synthetic", "--root", str(root), "--out", str(out),
           "imgfeat.model=c2p-tiny", "job.shard_size=2", "views.image_size=32", "job.previews=0", "job.progress=false"]
    p = subprocess.run([*cmd, f"imgfeat.pretrained={weights}.typo"], capture_output=True, text=True, env=ENV, timeout=300)
    assert p.returncode == 2 and "config key 'imgfeat.pretrained'" in p.stderr, p.stderr
    assert not out.exists()  # no plan.json to make the corrected run "another plan"
    p = subprocess.run([*cmd, f"imgfeat.pretrained={weights}"], capture_output=True, text=True, env=ENV, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (out / "index.json").is_file() and (out / "plan.json").is_file()


HELPER = """
import os

def die_on_rank_1(cfg):
    if os.environ.get("SUBMITIT_LOCAL_GLOBALID") == "1":
        os._exit(3)  # no result file, as a rank killed mid-step
    return "rank 0 done"
"""


@pytest.mark.slow
def test_a_local_job_that_lost_a_rank_says_how_it_ended_not_a_slurm_state(tmp_path, monkeypatch):
    (tmp_path / "pylib").mkdir()
    (tmp_path / "pylib" / "refusal_helpers.py").write_text(HELPER)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "pylib"), os.environ.get("PYTHONPATH", "")]))
    job = submit(ClusterTask("refusal_helpers:die_on_rank_1", {}), ClusterOptions(cluster="local", tasks_per_node=2, time=5), tmp_path / "run")
    with pytest.raises(JobFailedError) as e:
        collect([job], timeout_s=180)
    message = str(e.value)
    assert "task 1 ended without a result (local job" in message and "SLURM" not in message, message
