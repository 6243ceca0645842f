"""Checkpoints (c2p.train.checkpoint): exact resume, crash safety, another world size, policy.

Real DeepSpeed ZeRO-2 runs over gloo (c2p-tiny, 32 px); the run helpers come from
test_pretrain.py. Policy details (discovery, keep-K, refusal, config diff) are unit tests on
folders with hand-written markers.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from c2p.train import checkpoint as ck
from c2p.train.checkpoint import CheckpointManager, CheckpointMismatchError, committed_tags, tag_name

from test_pretrain import (  # noqa: F401  (blob_shards is a fixture)
    assert_same_state, base_overrides, blob_shards, check_export_matches_engine, launch, read_metrics, universal_state)

SIG = {"model": "c2p-tiny", "embed_dim": 64, "image_size": 32}


def _manager(root: Path, **kw) -> CheckpointManager:
    args = dict(rank=0, world_size=2, zero_stage=2, every=10, keep=2, signature=SIG,
                config={"train": {"steps": 40}, "optim": {"lr": 0.006}}, config_hash="h")
    args.update(kw)
    return CheckpointManager(root, **args)


def _fake_tag(root: Path, step: int, *, committed: bool = True, world: int = 2, stage: int = 2, sig=SIG,
              config=None) -> Path:
    d = root / tag_name(step)
    d.mkdir(parents=True)
    (d / "mp_rank_00_model_states.pt").write_bytes(b"x")
    if committed:
        meta = {"tag": d.name, "step": step, "world_size": world, "zero_stage": stage, "signature": sig,
                "config": config or {"train": {"steps": 20}, "optim": {"lr": 0.006}}, "config_hash": "h"}
        (d / ck.COMMIT_NAME).write_text(json.dumps(meta))
    return d


# ----------------------------------------------------------------------------- policy (no engine)


def test_discovery_ignores_uncommitted_and_refuses_another_model(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    _fake_tag(root, 10)
    _fake_tag(root, 20)
    _fake_tag(root, 30, committed=False)  # a save that died before its marker
    (root / "step_00000040_universal").mkdir()  # caches and junk are not tags
    assert [t.step for t in committed_tags(root)] == [10, 20]
    with caplog.at_level(logging.INFO, logger="c2p.train"):
        target = _manager(root).resolve("auto")
    assert (target.tag, target.universal) == ("step_00000020", False)
    assert "train.steps: 20 -> 40" in caplog.text  # a changed setting is allowed and logged
    assert _manager(root).resolve("none") is None
    assert _manager(tmp_path / "empty").resolve("auto") is None
    assert _manager(root).resolve(str(root / "step_00000010")).source.step == 10
    assert _manager(root).resolve(str(tmp_path)).source.step == 20  # a run folder: its newest committed tag
    with pytest.raises(ValueError, match="no c2p_commit.json"):
        _manager(root).resolve(str(root / "step_00000030"))
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        _manager(root).resolve(str(tmp_path / "does_not_exist"))
    # another world size / stage -> universal conversion, cached next to the tag
    t = _manager(root, world_size=1).resolve("auto")
    assert t.universal and t.tag == "step_00000020_universal" and t.load_dir == root
    # another model: refused, naming both
    other = {"model": "c2p-small", "embed_dim": 128, "image_size": 64}
    with pytest.raises(CheckpointMismatchError, match=r"c2p-tiny.*c2p-small|c2p-small.*c2p-tiny") as e:
        _manager(root, signature=other).resolve("auto")
    assert "128" in str(e.value) and "64" in str(e.value)


def test_prune_keeps_k_and_survives_a_failed_delete(tmp_path, monkeypatch, caplog):
    root = tmp_path / "checkpoints"
    for s in (10, 20, 30, 40):
        _fake_tag(root, s)
    _fake_tag(root, 15, committed=False)
    (root / "step_00000010_universal").mkdir()
    real_rmtree = shutil.rmtree

    def flaky(path, *a, **kw):
        if Path(path).name == "step_00000020":
            raise PermissionError(13, "read-only file system", str(path))
        return real_rmtree(path, *a, **kw)

    monkeypatch.setattr(ck.shutil, "rmtree", flaky)
    with caplog.at_level(logging.WARNING, logger="c2p.train"):
        _manager(root, keep=2)._prune()
    left = sorted(p.name for p in root.iterdir())
    assert left == ["step_00000020", "step_00000030", "step_00000040"], left
    assert "could not delete" in caplog.text
    m = _manager(root, every=10)
    assert m.should_save(20) and not m.should_save(21) and m.should_save(21, last=True)


# ----------------------------------------------------------------------------- real runs


@pytest.mark.slow
def test_exact_resume_crash_safety_and_another_world_size(tmp_path, blob_shards):
    """ZeRO-2, 2 ranks, deterministic.

    1. Crash safety: the second run's rank 1 dies after writing its shard of step 30, before the
       commit marker: step 30 is never `latest`, and the next run resumes from step 20.
    2. Exact resume: 40 straight == 20 (+ the lost 21-30) + resume to 40: steps 21-40 bit-equal.
    3. The run moves 2 -> 1 rank (universal checkpoint, cached next to the tag), trains 5 steps,
       and 1 -> 2: each time the loaded fp32 weights and LAMB moments equal the saved ones, the
       step counter carries on and training continues; the final export loads into open_clip.
    """
    common = ["train.zero_stage=2", "train.deterministic=true", "checkpoint.every=10", "checkpoint.keep=3"]
    launch(2, base_overrides(blob_shards, tmp_path, "straight") + common + ["train.steps=40", "checkpoint.export=false"])
    resumed = base_overrides(blob_shards, tmp_path, "resumed") + common
    launch(2, resumed + ["train.steps=30"], env={ck.KILL_ENV: "30:1"}, expect_rc={1: 17})
    ckpts = tmp_path / "resumed" / "checkpoints"
    assert any((ckpts / "step_00000030").glob("*optim_states.pt"))  # shards written ...
    assert not (ckpts / "step_00000030" / ck.COMMIT_NAME).exists()  # ... never committed
    assert (ckpts / "latest").read_text() == "step_00000020"
    assert [t.step for t in committed_tags(ckpts)] == [10, 20]

    out = launch(2, resumed + ["train.steps=40", "checkpoint.export=false"])[0]
    assert "resumed from step 20" in out and "train.steps: 30 -> 40" in out
    straight, again = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "resumed")
    assert [r["step"] for r in again] == list(range(1, 41))  # the lost steps 21-30 were dropped and redone
    for a, b in zip(straight[20:], again[20:]):
        assert (a["step"], a["loss"], a["loss_cross"], a["loss_intra"], a["w"]) == \
            (b["step"], b["loss"], b["loss_cross"], b["loss_intra"], b["w"])
    assert [t.step for t in committed_tags(ckpts)] == [20, 30, 40] and (ckpts / "latest").read_text() == "step_00000040"

    # 2 -> 1 rank from step 40
    run = tmp_path / "resumed"
    dump = tmp_path / "dump1"
    out = launch(1, resumed + ["train.steps=45", "checkpoint.every=5"], env={ck.DUMP_ENV: str(dump)})[0]
    assert "resumed from step 40" in out and "universal" in out
    assert (ckpts / "step_00000040_universal" / ck.UNIVERSAL_DONE).is_file()  # cached next to the tag
    assert_same_state(universal_state(ckpts / "step_00000040_universal"),
                       universal_state(dump / "loaded", tmp_path / "u40_loaded"))
    m = read_metrics(run)
    assert [r["step"] for r in m] == list(range(1, 46)) and m[-1]["samples"] == 45 * 16
    assert json.loads((ckpts / "step_00000045" / ck.COMMIT_NAME).read_text())["world_size"] == 1

    # 1 -> 2 ranks from step 45; the export of the final tag loads into a plain visual tower
    dump2 = tmp_path / "dump2"
    out = launch(2, resumed + ["train.steps=48", "checkpoint.every=5"], env={ck.DUMP_ENV: str(dump2)})[0]
    assert "resumed from step 45" in out
    assert_same_state(universal_state(ckpts / "step_00000045_universal"),
                       universal_state(dump2 / "loaded", tmp_path / "u45_loaded"))
    m = read_metrics(run)
    assert [r["step"] for r in m][-3:] == [46, 47, 48] and all(r["loss"] == r["loss"] for r in m)
    check_export_matches_engine(run)
