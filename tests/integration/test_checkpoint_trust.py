"""Runs you can trust, with real DeepSpeed ranks over gloo (c2p-tiny, 32 px): a damaged, truncated
or missing file of the newest tag makes the resume fall back to the newest intact tag naming the
file (and keep-K keeps it); a checkpoint file carrying code runs nothing, in the export command
and in a resume; a non-finite loss stops the run before the step is committed; evaluation
refuses a diverged tower. The policy on hand-built tags: tests/unit/test_checkpoint_verify.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from test_pretrain import REPO, base_overrides, blob_shards, launch, read_metrics  # noqa: F401  (blob_shards is a fixture)

from c2p.train import checkpoint as ck
from c2p.train.checkpoint import committed_tags
from c2p.train.ckptverify import file_sha256

OPTIM = "zero_pp_rank_{}_mp_rank_00_optim_states.pt"


def steps(ckpts) -> list[int]:
    return [t.step for t in committed_tags(ckpts)]


def flip_4k(path) -> None:
    """Overwrite 4 KiB in the middle of ``path`` with their complement: same size, other bytes."""
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        chunk = f.read(4096)
        f.seek(-len(chunk), os.SEEK_CUR)
        f.write(bytes(b ^ 0xFF for b in chunk))


@pytest.mark.slow
def test_damaged_truncated_or_missing_files_fall_back_to_the_newest_intact_tag(tmp_path, blob_shards):
    """ZeRO-2, 2 ranks. Tags 1-3; 4 KiB of rank 1's optimizer state of tag 3 flipped: the resume
    names the file, loads tag 2, and keep=2 keeps 2 (the damaged 3 does not count and stays).
    Then tag 4 truncated and a shard file of 3 removed: both named, tag 2 again."""
    run = base_overrides(blob_shards, tmp_path, "r") + ["train.zero_stage=2", "checkpoint.export=false"]
    ckpts = tmp_path / "r" / "checkpoints"
    launch(2, run + ["train.steps=3", "checkpoint.every=1", "checkpoint.keep=3"])
    assert steps(ckpts) == [1, 2, 3]
    flip_4k(ckpts / "step_00000003" / OPTIM.format(1))

    out = launch(2, run + ["train.steps=4", "checkpoint.every=10", "checkpoint.keep=2"])[0]
    assert f"step_00000003 fails verification, not resuming from it: {OPTIM.format(1)}: sha256 differs" in out
    assert "resumed from step 2" in out and "resumed from step 3" not in out
    assert steps(ckpts) == [2, 3, 4]  # keep=2 over the intact tags 2 and 4; the damaged 3 is left, not counted
    assert [r["step"] for r in read_metrics(tmp_path / "r")] == [1, 2, 3, 4]

    with open(ckpts / "step_00000004" / OPTIM.format(0), "r+b") as f:
        f.truncate(1000)
    (ckpts / "step_00000003" / OPTIM.format(0)).unlink()
    out = launch(2, run + ["train.steps=5", "checkpoint.every=10", "checkpoint.keep=2"])[0]
    assert f"step_00000004 fails verification, not resuming from it: {OPTIM.format(0)}: 1000 bytes, the commit marker says" in out
    assert f"{OPTIM.format(0)}: missing" in out
    assert "skipped: step_00000004, step_00000003" in out and "resumed from step 2" in out
    assert steps(ckpts) == [2, 3, 4, 5]


class _Payload:
    """Unpickling it calls ``open(path, "w")``: the file appears if a load runs code from the checkpoint."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.slow
def test_a_checkpoint_file_that_carries_code_runs_nothing(tmp_path, blob_shards):
    """The optimizer-state file of a committed ZeRO-2 tag gets a pickled call to ``open``; its
    checksum in the marker is rewritten to match, so only the weights-only loads stand in the
    way. ``launch/export.py RUN`` and a resume from the tag both fail naming the file; the file
    the payload would create never appears (and does when the file is loaded the unsafe way)."""
    launch(1, base_overrides(blob_shards, tmp_path, "evil") + ["train.steps=2", "checkpoint.every=1", "checkpoint.export=false"])
    tag = tmp_path / "evil" / "checkpoints" / "step_00000002"
    victim, ran = tag / OPTIM.format(0), tmp_path / "payload_ran"
    state = torch.load(victim, map_location="cpu", weights_only=False)  # our own file, written just now
    state["c2p_extra"] = _Payload(ran)
    torch.save(state, victim)
    marker = json.loads((tag / ck.COMMIT_NAME).read_text())
    marker["files"][victim.name] = {"size": victim.stat().st_size, "sha256": file_sha256(victim)}
    (tag / ck.COMMIT_NAME).write_text(json.dumps(marker))

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    r = subprocess.run([sys.executable, str(REPO / "launch" / "export.py"), str(tmp_path / "evil"), "--cluster", "local"],
                       capture_output=True, text=True, env=env, cwd=REPO)
    assert r.returncode == 1, r.stderr[-3000:]
    assert f"{victim}: refused to load this checkpoint file: it asks to build or call the global io.open" in r.stderr
    assert not ran.exists() and not (tmp_path / "evil" / "export").exists()

    out = launch(1, base_overrides(blob_shards, tmp_path, "evil") + ["train.steps=3", f"checkpoint.resume={tag}"],
                 expect_rc={0: 1})[0]
    assert f"UnsafeCheckpointError: {victim}: refused to load" in out and "resumed from" not in out
    assert not ran.exists() and steps(tag.parent) == [1, 2]
    torch.load(victim, map_location="cpu", weights_only=False)
    assert ran.exists()  # the payload is real: only the weights-only loads kept it from running


@pytest.mark.slow
def test_a_nonfinite_loss_stops_the_run_before_the_step_is_committed(tmp_path, blob_shards):
    """optim.lr=1e30 (LAMB, ZeRO-2, 2 ranks): step 1 is finite and committed, its update blows the
    weights up, step 2's loss is NaN: every rank stops naming step 2 and the term; no tag 2."""
    outs = launch(2, base_overrides(blob_shards, tmp_path, "nan") + [
        "optim.lr=1e30", "train.steps=4", "checkpoint.every=1"], expect_rc={0: 1, 1: 1})
    for out in outs:
        assert re.search(r"NonFiniteError: non-finite loss at step 2: loss_\w+=(nan|inf|-inf) on rank \d", out), out[-3000:]
        assert "before step 2 is committed" in out
    ckpts = tmp_path / "nan" / "checkpoints"
    assert steps(ckpts) == [1] and not (ckpts / "step_00000002").exists()
    assert (ckpts / "latest").read_text() == "step_00000001" and not (tmp_path / "nan" / "export").exists()


@pytest.mark.slow
def test_skip_policy_drops_batches_with_a_nan_on_any_rank_and_trains_on(tmp_path):
    """One object of 32 carries a NaN image feature: every batch holding it has a NaN loss on the
    one rank that drew it. train.nonfinite=skip: both ranks drop that batch together and draw
    the next; the run ends with finite metrics, weights and export."""
    import numpy as np
    from testdata import object_sample, unit_sphere_points, write_shard_dir

    rng = np.random.default_rng(0)
    feats = rng.standard_normal((32, 64)).astype(np.float32)
    feats[0] = np.nan
    samples = [object_sample("blobs", f"o{i:04d}", f"c{i % 4}", i % 4, unit_sphere_points(rng, 256), views=[[0.0, 0.0, 1.0]],
                             imgfeat={"tiny": feats[i][None]}) for i in range(32)]
    shards = write_shard_dir(tmp_path / "shards", [samples[s::4] for s in range(4)], corpus="blobs", labels=[f"c{j}" for j in range(4)])
    outs = launch(2, base_overrides(shards, tmp_path, "skip") + [
        "train.nonfinite=skip", "train.nonfinite_max_skips=50", "train.steps=4", "checkpoint.every=2"])
    skips = [re.findall(r"non-finite loss at step (\d+): loss_cross=nan on rank (\d).*skipping this batch", out) for out in outs]
    assert skips[0] and skips[0] == skips[1], outs[0][-3000:]  # both ranks dropped the same batches
    assert "1" in {r for _, r in skips[0]}  # rank 0, its own loss finite, dropped a batch for rank 1's NaN
    m = read_metrics(tmp_path / "skip")
    assert [r["step"] for r in m] == [1, 2, 3, 4] and all(np.isfinite(r["loss"]) for r in m)
    assert steps(tmp_path / "skip" / "checkpoints") == [2, 4] and (tmp_path / "skip" / "export" / "depth_tower.safetensors").is_file()


@pytest.mark.slow
def test_a_failed_export_at_the_end_of_training_ends_every_rank(tmp_path, blob_shards):
    """The export folder cannot be made (a file is in the way): rank 0's export fails and rank 1,
    instead of waiting for it in the run's last barrier, exits too, naming rank 0's error."""
    (tmp_path / "blocked").mkdir()
    (tmp_path / "blocked" / "export").write_text("not a folder")
    outs = launch(2, base_overrides(blob_shards, tmp_path, "blocked") + ["train.steps=1"], expect_rc={0: 1, 1: 1})
    assert "FileExistsError" in outs[0]
    assert "the export on rank 0 failed: FileExistsError" in outs[1]


def test_evaluation_refuses_a_tower_with_nonfinite_weights(tmp_path, capsys):
    from safetensors.torch import save_file

    from c2p.cli.evaluate import main as evaluate_main
    from c2p.corpora.synthetic import write_synthetic
    from c2p.models.clip import create_clip

    root = write_synthetic(tmp_path / "corpus", layout="shapenet", per_class=1, seed=0, test_per_class=1)
    tower = {k: v.contiguous() for k, v in create_clip("c2p-tiny").visual.state_dict().items()}
    tower["conv1.weight"][0] = float("nan")
    path = tmp_path / "depth_tower.safetensors"
    save_file(tower, str(path))
    rc = evaluate_main(["--depth-tower", str(path), "--config", str(REPO / "configs/downstream/zeroshot_tiny.yaml"),
                        "--root", str(root), "--cluster", "local", f"run.dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"{path} holds non-finite weights: tensor 'conv1.weight'" in err
