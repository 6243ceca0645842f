"""Checkpoints (c2p.train.checkpoint) with real DeepSpeed ZeRO-2 ranks over gloo (c2p-tiny, 32 px):
exact resume, crash safety, another world size. The run helpers come from test_pretrain.py;
the policy (discovery, keep-K, refusal) is in tests/unit/test_checkpoint.py."""

from __future__ import annotations

import json

import pytest
from test_pretrain import (  # noqa: F401  (blob_shards is a fixture)
    assert_same_state,
    base_overrides,
    blob_shards,
    check_export_matches_engine,
    launch,
    read_metrics,
    universal_state,
)

from c2p.train import checkpoint as ck
from c2p.train.checkpoint import (
    committed_tags,
)

SIG = {"model": "c2p-tiny", "embed_dim": 64, "image_size": 32}


# ----------------------------------------------------------------------------- policy (no engine)


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
