"""c2p.data with DataLoader worker processes: exact resume and the stream across workers, over
real tar shards written with c2p.schema (content-encoded as in tests/unit/test_data.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from shardkit import object_sample, write_shard_dir

from c2p.config.pretrain import DataConfig
from c2p.data import PretrainStream
from c2p.schema import SHARD_PATTERN, ShardIndex

VIEWS = 3
P_STORED = 64
SIDE = 16  # stored render side; the stream resizes to cfg.image_size
FEAT_DIM = 8


def view_colour(v: int) -> np.ndarray:
    return np.array([40 * v + 20, 200 - 30 * v, 90], dtype=np.uint8)


def make_sample(corpus: str, uid: str, label: int, rng: np.random.Generator, *, points: bool = True) -> dict:
    pts = rng.uniform(-0.5, 0.5, size=(P_STORED, 3)).astype(np.float32)
    rgb = [np.broadcast_to(view_colour(v), (SIDE, SIDE, 3)).copy() for v in range(VIEWS)]
    feats = np.stack([np.full(FEAT_DIM, v + 1.0) for v in range(VIEWS)])
    return object_sample(corpus, uid, f"class{label}", label, pts, views=[[10.0 * v, 45.0 * v, 1.0] for v in range(VIEWS)],
                         rgb=rgb, imgfeat={"tiny": feats}, source=f"/src/{uid}", drop=() if points else ("points.npy",))


def write_corpus(root: Path, corpus: str, shards: int, per_shard: int, seed: int = 0) -> Path:
    """A shard directory with index.json: ``shards`` tars of ``per_shard`` samples, labels 0..3."""
    rng = np.random.default_rng(seed)
    samples = [[make_sample(corpus, f"s{s}o{i}", (s * per_shard + i) % 4, rng) for i in range(per_shard)] for s in range(shards)]
    return write_shard_dir(root, samples, corpus=corpus, labels=[f"class{i}" for i in range(4)])


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("shards")
    alpha = write_corpus(base / "alpha", "alpha", shards=4, per_shard=8, seed=1)
    beta = write_corpus(base / "beta", "beta", shards=2, per_shard=8, seed=2)

    # "broken": one good shard, a truncated copy, a garbage tar, a tar with a sample missing points.
    broken = write_corpus(base / "broken", "broken", shards=2, per_shard=8, seed=3)
    whole = (broken / SHARD_PATTERN.format(1)).read_bytes()
    (broken / SHARD_PATTERN.format(1)).write_bytes(whole[: len(whole) // 2 + 100])
    (broken / SHARD_PATTERN.format(2)).write_bytes(np.random.default_rng(0).bytes(5000))
    rng = np.random.default_rng(4)
    write_shard_dir(broken, [[make_sample("broken", f"x{i}", i, rng, points=(i != 2)) for i in range(4)]], corpus="broken",
                    labels=[], index=False, first=3)
    index = ShardIndex.load(broken)
    index.shards.update({SHARD_PATTERN.format(2): 8, SHARD_PATTERN.format(3): 4})
    index.save(broken)
    return {"alpha": alpha, "beta": beta, "broken": broken}


def data_cfg(shards, **kw) -> DataConfig:
    base = dict(shards=[str(s) for s in shards], points=32, shuffle_buffer=16, workers=0, image_size=24)
    base.update(kw)
    return DataConfig(**base)


def take(stream: PretrainStream, n: int) -> list[dict]:
    out = []
    for batch in stream:
        out.append(batch)
        if len(out) == n:
            break
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "workers,reseed_every,resume_at",
    [(0, 10, 20), (2, 10, 20), (2, 5, 15)],  # the last: the resumed run's worker 0 serves the old worker 1's lane
)
def test_exact_resume(corpora, workers, reseed_every, resume_at):
    cfg = data_cfg([corpora["alpha"], corpora["beta"]], weights=[2.0, 1.0], workers=workers, imgfeat_tag="tiny")
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
    cfg = data_cfg([corpora["broken"]], workers=2, resampled=resampled, imgfeat_tag="tiny")
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


