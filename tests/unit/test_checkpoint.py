"""Checkpoint policy (c2p.train.checkpoint) on folders with hand-written markers: discovery of
committed tags, keep-K pruning, refusal of another model. Exact resume, crash safety and
another world size run real DeepSpeed ranks: tests/integration/test_checkpoint_resume.py."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from c2p.train import checkpoint as ck
from c2p.train.checkpoint import (
    CheckpointManager,
    CheckpointMismatchError,
    committed_tags,
    tag_name,
)

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


def test_one_keep_k_rule_for_the_run_directory_and_the_mirror():
    """c2p.train.retention, which both places call: the newest K not known damaged, the newest known
    good one, damaged ones for the operator; older tags and leftovers go, newer folders stay."""
    from c2p.train.retention import expired, tags_to_keep

    tags = [tag_name(s) for s in (10, 20, 30, 40, 50)]
    assert tags_to_keep(tags, 2) == {tags[3], tags[4]}
    assert tags_to_keep(tags, 2, trusted={tags[1]}) == {tags[1], tags[3], tags[4]}  # the newest known good stays
    assert tags_to_keep(tags, 2, trusted={tags[1], tags[4]}) == {tags[3], tags[4]}
    assert tags_to_keep(tags, 2, damaged={tags[4]}) == {tags[2], tags[3], tags[4]}  # damaged: kept, not counted
    assert tags_to_keep(tags, 10) == set(tags)
    with pytest.raises(ValueError, match="checkpoint.keep=0: expected at least 1"):
        tags_to_keep(tags, 0)
    leftovers = [tag_name(15), tag_name(60)]  # a crashed save below the newest tag, a save in progress above it
    assert expired(tags + leftovers, tags, {tags[3], tags[4]}) == [tags[0], tag_name(15), tags[1], tags[2]]
    assert expired(leftovers, [], set()) == []  # nothing committed: nothing deleted


# ----------------------------------------------------------------------------- real runs


