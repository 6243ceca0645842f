"""The one builder of c2p shard directories for tests: objects made from arrays, written with
the real :class:`~c2p.schema.ShardWriter` and indexed with :class:`~c2p.schema.ShardIndex`, so
every reader under test sees exactly what the render job writes.

    sample = object_sample("blobs", "o0001", "c1", 1, points, imgfeat={"tiny": feats})
    write_shard_dir(root, [[s0, s1], [s2]], corpus="blobs", labels=["c0", "c1"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from c2p.schema import SampleMeta, ShardIndex, ShardWriter, encode_sample, make_key
from c2p.sharddir import shard_name


def object_sample(
    corpus: str,
    uid: str,
    label: str,
    label_index: int,
    points: np.ndarray,
    *,
    views: Sequence[Sequence[float]] | None = None,
    rgb: Sequence[np.ndarray] | None = None,
    depth: Sequence[np.ndarray] | None = None,
    imgfeat: dict[str, np.ndarray] | None = None,
    caption: str = "",
    source: str = "test",
    stored_points: int | None = None,
    drop: Sequence[str] = (),
) -> dict[str, Any]:
    """One encoded sample. ``points``: [P,3]; ``views``: [V,3] (elev°, azim°, dist), default one
    front view per RGB image (or one); ``caption`` goes to ``meta.json`` and the ``txt`` member;
    ``drop``: member names to leave out (a broken sample)."""
    n_views = len(rgb) if rgb is not None else 1
    views = [list(map(float, v)) for v in views] if views is not None else [[0.0, 90.0 * v, 1.0] for v in range(n_views)]
    meta = SampleMeta(uid=uid, corpus=corpus, label=label, label_index=label_index, source=source, views=views,
                      points=stored_points if stored_points is not None else len(points), caption=caption)
    sample = encode_sample(make_key(corpus, uid), points, meta, rgb=rgb, depth=depth, imgfeat=imgfeat, caption=caption or None)
    for name in drop:
        del sample[name]
    return sample


def write_shard_dir(root: Path, shards: Sequence[Sequence[dict[str, Any]]], *, corpus: str, labels: Sequence[str],
                    index: bool = True, first: int = 0) -> Path:
    """``shards[i]``'s samples into ``root/shard-<first+i>.tar`` and, with ``index``, an
    ``index.json`` counting them. Returns ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    counts = {}
    for i, samples in enumerate(shards):
        name = shard_name(first + i)
        with ShardWriter(root / name) as w:
            for sample in samples:
                w.write(sample)
        counts[name] = len(samples)
    if index:
        ShardIndex(corpus=corpus, settings={}, labels=list(labels), shards=counts, total_objects=sum(counts.values())).save(root)
    return root


def unit_sphere_points(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n,3] Gaussian points scaled to max norm 1."""
    p = rng.standard_normal((n, 3))
    return p / np.linalg.norm(p, axis=1).max()
