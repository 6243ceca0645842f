"""Runs you can trust, on hand-built tags (no engine): the commit marker's file manifest and its
verification (c2p.train.ckptverify), the fallback from a damaged tag and keep-K around it
(c2p.train.checkpoint), weights-only loads (c2p.train.ckptload), the non-finite guard
(c2p.train.nonfinite), and the export and evaluation refusing NaN/inf weights. Real DeepSpeed
tags and runs: tests/integration/test_checkpoint_trust.py."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch

from c2p.train import checkpoint as ck
from c2p.train.checkpoint import (
    CheckpointIntegrityError,
    CheckpointManager,
    committed_tags,
    tag_name,
)
from c2p.train.ckptverify import (
    CHECKSUM,
    build_manifest,
    hash_own_files,
    owner_rank,
    verify_files,
)

SIG = {"model": "c2p-tiny", "embed_dim": 64, "image_size": 32}
OPTIM = "zero_pp_rank_1_mp_rank_00_optim_states.pt"
SKIP = (ck.COMMIT_NAME,)


def _manager(root: Path, **kw) -> CheckpointManager:
    args = dict(rank=0, world_size=2, zero_stage=2, every=10, keep=2, signature=SIG, config={}, config_hash="h")
    args.update(kw)
    return CheckpointManager(root, **args)


def _tag(root: Path, step: int, *, manifest: bool = True) -> Path:
    """A committed tag of two ranks' files (random bytes); its marker lists them unless ``manifest=False``."""
    d = root / tag_name(step)
    d.mkdir(parents=True)
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt", OPTIM, "c2p_rank00001.json"):
        (d / name).write_bytes(os.urandom(3 * 4096))
    meta = {"tag": d.name, "step": step, "world_size": 2, "zero_stage": 2, "signature": SIG, "config": {}, "config_hash": "h"}
    if manifest:
        parts = [hash_own_files(d, r, 2) for r in range(2)]
        meta.update(checksum=CHECKSUM, files=build_manifest(d, parts, skip=SKIP))
    (d / ck.COMMIT_NAME).write_text(json.dumps(meta))
    return d


def _flip_4k(path: Path) -> None:
    """Overwrite 4 KiB in the middle of a file, same size."""
    with open(path, "r+b") as f:
        f.seek(4096)
        chunk = f.read(4096)
        f.seek(4096)
        f.write(bytes(b ^ 0xFF for b in chunk))


# ----------------------------------------------------------------------------- manifest


def test_each_rank_hashes_its_own_files_and_verification_names_each_problem(tmp_path):
    assert [owner_rank(n, 2) for n in ("mp_rank_00_model_states.pt", OPTIM, "c2p_rank00001.json",
                                       "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt", "zero_pp_rank_7_x.pt")] == [0, 1, 1, 1, 0]
    d = _tag(tmp_path, 10)
    files = json.loads((d / ck.COMMIT_NAME).read_text())["files"]
    assert sorted(files) == sorted(p.name for p in d.iterdir() if p.name != ck.COMMIT_NAME)
    assert hash_own_files(d, 1, 2).keys() == {OPTIM, "c2p_rank00001.json"}  # rank 1 reads only what it wrote
    assert verify_files(d, files, skip=SKIP) == []
    # two ranks split the reading: together they see what one sees
    _flip_4k(d / OPTIM)
    (d / "c2p_rank00001.json").write_bytes(b"short")
    (d / "mp_rank_00_model_states.pt").unlink()
    (d / "stray.pt").write_bytes(b"x")
    halves = [str(p) for r in range(2) for p in verify_files(d, files, share=(r, 2), skip=SKIP)]
    whole = [str(p) for p in verify_files(d, files, skip=SKIP)]
    assert sorted(halves) == sorted(whole) and len(whole) == 4, whole
    text = "\n".join(whole)
    assert f"{OPTIM}: sha256 differs from the commit marker's (same size, 12288 bytes" in text
    assert "c2p_rank00001.json: 5 bytes, the commit marker says 12288" in text
    assert "mp_rank_00_model_states.pt: missing" in text and "stray.pt: not listed" in text


# ----------------------------------------------------------------------------- resume: fallback and refusal


def test_damaged_newest_tag_falls_back_with_a_warning_and_keep_k_keeps_the_good_one(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    for step in (10, 20, 30):
        _tag(root, step)
    _flip_4k(root / tag_name(30) / OPTIM)
    m = _manager(root, keep=1)
    with caplog.at_level(logging.INFO, logger="c2p.train"):
        target = m.resolve("auto")
    assert target.source.step == 20 and m.damaged == {"step_00000030"} and m.trusted == {"step_00000020"}
    assert f"step_00000030 fails verification, not resuming from it: {OPTIM}: sha256 differs" in caplog.text
    assert "resuming from step_00000020, the newest committed tag that verifies (skipped: step_00000030)" in caplog.text
    # keep=1: the damaged tag neither counts nor is deleted; the good one it fell back to stays
    m._prune()
    assert [t.step for t in committed_tags(root)] == [20, 30]
    # newer tags that cannot be verified (committed before checksums) never push out the last verified one
    _tag(root, 40, manifest=False)
    _tag(root, 50, manifest=False)
    m._prune()
    assert [t.step for t in committed_tags(root)] == [20, 30, 50]
    # (keep-K alone would have kept only 50 and deleted 20, the one tag known to be intact)
    assert _manager(root, keep=1).resolve("auto").source.step == 50  # no checksums: loaded, with a warning
    assert "committed without checksums" in caplog.text


def test_an_explicit_damaged_tag_is_refused_and_no_intact_tag_is_an_error(tmp_path):
    root = tmp_path / "checkpoints"
    _tag(root, 10)
    d = _tag(root, 20)
    (d / OPTIM).write_bytes((d / OPTIM).read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointIntegrityError, match=rf"checkpoint.resume=.*step_00000020.* fails verification: {OPTIM}: 100 bytes"):
        _manager(root).resolve(str(d))
    assert _manager(root).resolve(str(tmp_path)).source.step == 10  # a run folder falls back like auto
    (root / tag_name(10) / "mp_rank_00_model_states.pt").unlink()
    with pytest.raises(CheckpointIntegrityError, match="no committed tag in .* verifies .*step_00000020, step_00000010"):
        _manager(root).resolve("auto")


# ----------------------------------------------------------------------------- weights-only loads


class _Payload:
    """Unpickling it calls ``open(path, "w")``: the file appears if the load runs code."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_weights_only_loads_refuse_code_even_when_the_caller_asks_for_pickle(tmp_path):
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from c2p.train.ckptload import UnsafeCheckpointError, weights_only_loads

    marker = tmp_path / "ran"
    bad, good = tmp_path / "bad.pt", tmp_path / "good.pt"
    torch.save({"state": torch.ones(2), "x": _Payload(marker)}, bad)
    torch.save({"state": torch.ones(2), "stage": ZeroStageEnum.gradients}, good)
    with weights_only_loads():
        with pytest.raises(UnsafeCheckpointError, match=r"bad.pt: refused to load this checkpoint file: it asks to build or call the global io.open"):
            torch.load(bad, weights_only=False)  # what DeepSpeed asks for
        assert torch.load(good, weights_only=False)["stage"] == ZeroStageEnum.gradients  # on the allow-list
    assert not marker.exists()
    torch.load(bad, weights_only=False)  # outside the block torch.load is torch's again: the payload is live
    assert marker.exists()


# ----------------------------------------------------------------------------- non-finite values


def test_nonfinite_guard_stops_or_skips_naming_step_term_and_parameter(caplog):
    from c2p.train.nonfinite import NonFiniteError, NonFiniteGuard

    finite = {"loss": torch.tensor(3.0), "loss_cross": torch.tensor(2.0), "loss_intra": torch.tensor(1.0), "w": torch.tensor(1.0)}
    bad = dict(finite, loss=torch.tensor(float("nan")), loss_intra=torch.tensor(float("inf")))
    stop = NonFiniteGuard("stop", 0, 0, 1, torch.device("cpu"))
    assert stop.loss_ok(finite, 7)
    with pytest.raises(NonFiniteError, match=r"non-finite loss at step 7: loss_intra=inf on rank 0 \(also loss\).*before step 7 is committed"):
        stop.loss_ok(bad, 7)
    skip = NonFiniteGuard("skip", 2, 0, 1, torch.device("cpu"))
    with caplog.at_level(logging.WARNING, logger="c2p.train"):
        assert not skip.loss_ok(bad, 3) and not skip.loss_ok(bad, 3)
    assert "skipping this batch (2 of train.nonfinite_max_skips=2)" in caplog.text
    with pytest.raises(NonFiniteError, match="after 2 skipped batches"):
        skip.loss_ok(bad, 4)

    class Engine:  # the guard reads engine.module only: a real module stands in for the engine
        module = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))

    stop.check_weights(Engine, 5)
    with torch.no_grad():
        Engine.module[1].weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"non-finite weights after step 5: parameter '1.weight' holds 1 NaN/inf"):
        stop.check_weights(Engine, 5)


def _zero0_tag(root: Path, step: int, module_state: dict) -> Path:
    """A committed ZeRO-0 tag (the whole module in mp_rank_00_model_states.pt) of the tiny config."""
    from c2p.config.core import build_config, to_dict
    from c2p.config.pretrain import PretrainConfig

    cfg = to_dict(build_config(PretrainConfig, {"data": {"shards": ["x"]}, "model": {"name": "c2p-tiny"},
                                                "depth": {"image_size": 32}}))
    d = root / tag_name(step)
    d.mkdir(parents=True)
    torch.save({"module": module_state}, d / "mp_rank_00_model_states.pt")
    meta = {"tag": d.name, "step": step, "world_size": 1, "zero_stage": 0, "signature": SIG, "config": cfg,
            "config_hash": "h", "checksum": CHECKSUM, "files": build_manifest(d, [], skip=SKIP)}
    (d / ck.COMMIT_NAME).write_text(json.dumps(meta))
    return d


def test_export_and_evaluation_refuse_nonfinite_weights_naming_the_tensor(tmp_path):
    from safetensors.torch import save_file

    from c2p.config.core import build_config
    from c2p.config.pretrain import PretrainConfig
    from c2p.eval.errors import EvalError
    from c2p.eval.towers import load_depth_tower
    from c2p.models.clip import create_clip
    from c2p.train.export import NonFiniteTensorError, export_depth_tower
    from c2p.train.pretrain import build_clip2point

    cfg = build_config(PretrainConfig, {"data": {"shards": ["x"]}, "model": {"name": "c2p-tiny"}, "depth": {"image_size": 32}})
    state = {k: v.clone() for k, v in build_clip2point(cfg, pretrained=False)[1].state_dict().items()}
    root = tmp_path / "checkpoints"
    good = export_depth_tower(_zero0_tag(root, 1, state), tmp_path / "good")
    key = next(k for k in state if k.endswith("conv1.weight"))
    state[key][0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteTensorError, match=r"step_00000002: depth tower: tensor 'conv1.weight' holds 1 non-finite"):
        export_depth_tower(_zero0_tag(root, 2, state), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    # a damaged tag is refused before its weights are read
    damaged = _zero0_tag(root, 3, state)
    (damaged / "mp_rank_00_model_states.pt").write_bytes(b"")
    with pytest.raises(CheckpointIntegrityError, match="mp_rank_00_model_states.pt: 0 bytes"):
        export_depth_tower(damaged, tmp_path / "damaged")

    tiny = create_clip("c2p-tiny").visual
    assert load_depth_tower(good, tiny, "c2p-tiny") is not None
    tower = {k: v.contiguous() for k, v in tiny.state_dict().items()}
    tower["proj"] = torch.full_like(tower["proj"], float("inf"))
    nan_file = tmp_path / "diverged.safetensors"
    save_file(tower, str(nan_file))
    with pytest.raises(EvalError, match=rf"encoder.depth_tower: {nan_file} holds non-finite weights: tensor 'proj' has {tower['proj'].numel()} NaN/inf"):
        load_depth_tower(nan_file, tiny, "c2p-tiny")
