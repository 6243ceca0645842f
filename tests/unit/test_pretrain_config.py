"""Pre-training without ranks: schedules as pure functions of the step, the shipped configs
(the paper config faithful), the command's refusals, the export's errors. Real runs:
tests/integration/test_pretrain.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from c2p.config.core import load_config
from c2p.config.pretrain import PretrainConfig
from c2p.train.schedule import lr_at, steps_per_epoch

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "pretrain" / "tiny.yaml"
IMGFEAT_TAG = "tiny"
EMBED_DIM = 64  # c2p-tiny's joint embedding


# ----------------------------------------------------------------------------- fixtures / helpers


# ----------------------------------------------------------------------------- pure functions


def test_schedules_are_pure_functions_of_the_step():
    kw = dict(base_lr=6e-3, eta_min=1e-5, restart_steps=10)
    lrs = [lr_at(s, name="cosine_restarts", **kw) for s in range(30)]
    assert lrs[0] == pytest.approx(6e-3) and lrs[10] == pytest.approx(6e-3) and lrs[20] == pytest.approx(6e-3)
    assert lrs[5] == pytest.approx(1e-5 + (6e-3 - 1e-5) * 0.5)
    assert all(lrs[i] > lrs[i + 1] for i in range(9))  # decreasing inside a period
    assert lrs == [lr_at(s, name="cosine_restarts", **kw) for s in range(30)]  # no hidden state
    warm = [lr_at(s, name="warmup_cosine", base_lr=1.0, eta_min=0.0, warmup_steps=4, total_steps=14) for s in range(15)]
    assert warm[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0]) and warm[9] == pytest.approx(0.5) and warm[14] == pytest.approx(0.0)
    assert lr_at(123, name="constant", base_lr=0.1) == 0.1
    assert steps_per_epoch(52460, 256) == 204
    with pytest.raises(ValueError, match="epoch_samples"):
        steps_per_epoch(0, 256)


def test_configs_validate_and_paper_config_is_faithful():
    paper = load_config(PretrainConfig, REPO / "configs" / "pretrain" / "shapenet_vitb32.yaml")
    assert (paper.model.name, paper.train.batch_size, paper.optim.name, paper.optim.lr, paper.optim.weight_decay) == \
        ("ViT-B-32", 256, "lamb", 6e-3, 1e-4)
    assert (paper.schedule.name, paper.schedule.restart_epochs, paper.schedule.eta_min) == ("cosine_restarts", 2.0, 1e-5)
    assert paper.train.steps == 100 * 52460 // 256 and paper.loss.temperature == 0.07 and paper.data.points == 1024
    tiny = load_config(PretrainConfig, TINY)
    assert tiny.model.name == "c2p-tiny" and tiny.depth.image_size == 32


@pytest.mark.parametrize("remote", ["runs/ckpt", "gs://bucket/run", "s3:///no-bucket"])
def test_checkpoint_remote_must_be_an_s3_address(remote):
    from c2p.config.core import ConfigError

    with pytest.raises(ConfigError, match=rf"checkpoint.remote.*{remote}.*s3://bucket/prefix"):
        load_config(PretrainConfig, TINY, [f"checkpoint.remote={remote}"])
    assert load_config(PretrainConfig, TINY, ["checkpoint.remote=s3://ckpt/runs/tiny/"]).checkpoint.remote == "s3://ckpt/runs/tiny/"


def test_cli_refuses_bad_config_before_writing(tmp_path):
    r = subprocess.run([sys.executable, "-m", "c2p.train.pretrain", "--config", str(TINY), f"run.dir={tmp_path}",
                        "train.zero_stage=5"], capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 2 and "train.zero_stage" in r.stderr and "5" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_a_run_without_that_committed_tag(tmp_path):
    from c2p.train.export import export_job, export_run

    with pytest.raises(FileNotFoundError, match="no committed"):
        export_job({"run_dir": str(tmp_path), "tag": None, "out": None})
    tag = tmp_path / "checkpoints" / "step_00000004"
    tag.mkdir(parents=True)
    (tag / "c2p_commit.json").write_text("{}")
    with pytest.raises(ValueError, match=r"step_00000009.*step_00000004"):
        export_run(tmp_path, tag="step_00000009")


# ----------------------------------------------------------------------------- real runs


