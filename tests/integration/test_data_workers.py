"""c2p.data with DataLoader worker processes: exact resume and the stream across workers, over
real tar shards written with c2p.schema (content-encoded as in tests/unit/test_data.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from testdata import loader_config, take, write_loader_corpora

from c2p.data import PretrainStream


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    return write_loader_corpora(tmp_path_factory.mktemp("shards"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "workers,reseed_every,resume_at",
    [(0, 10, 20), (2, 10, 20), (2, 5, 15)],  # the last: the resumed run's worker 0 serves the old worker 1's lane
)
def test_exact_resume(corpora, workers, reseed_every, resume_at):
    cfg = loader_config([corpora["alpha"], corpora["beta"]], weights=[2.0, 1.0], workers=workers, imgfeat_tag="tiny")
    kw = dict(rank=1, world_size=2, seed=7, batch_size=4, reseed_every=reseed_every)
    straight = take(PretrainStream(cfg, **kw), 40)

    first = PretrainStream(cfg, **kw)
    take(first, resume_at)
    state = first.state_dict()
    assert state["step"] == resume_at
    resumed = PretrainStream(cfg, **{**kw, "seed": 0})  # the saved seed wins
    resumed.load_state_dict(state)
    rest = take(resumed, 40 - resume_at)
    for s, (a, b) in enumerate(zip(straight[resume_at:], rest), start=resume_at):
        assert a["key"] == b["key"], f"step {s}"
        for name in ("points", "view", "imgfeat", "label"):
            assert torch.equal(a[name], b[name]), f"step {s} {name}"
    assert resumed.step == 40
    # Not one batch over and over: steps and segments differ.
    assert straight[0]["key"] != straight[1]["key"] and straight[5]["key"] != straight[15]["key"]


@pytest.mark.slow
@pytest.mark.parametrize("resampled", [False, True])
def test_corrupt_shards_and_bad_samples_are_skipped_and_counted(corpora, resampled):
    # Workers=2: the counts are made in worker processes and must reach the main process.
    cfg = loader_config([corpora["broken"]], workers=2, resampled=resampled, imgfeat_tag="tiny")
    stream = PretrainStream(cfg, rank=0, world_size=1, seed=0, batch_size=4, reseed_every=5)
    batches = take(stream, 12)
    keys = [k for b in batches for k in b["key"]]
    assert "broken-x2" not in keys  # the sample without points.npy
    assert any(k.startswith("broken-s1") for k in keys)  # the truncated shard's readable head is used
    stats = stream.stats()
    assert stats["corrupt_shards"] >= 2, stats  # the truncated and the garbage tar
    assert stats["skipped_samples"] >= 1, stats
    assert stats["samples"] >= 48 and stats["step"] == 12
    # The counts survive a restart through the state dict.
    again = PretrainStream(cfg, rank=0, world_size=1, seed=0, batch_size=4)
    again.load_state_dict(stream.state_dict())
    assert again.stats()["corrupt_shards"] == stats["corrupt_shards"]


