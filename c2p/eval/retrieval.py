"""Depth→image retrieval on held-out shards: the pre-training objective, measured.

For every object of the shards and every RGB view ``v`` it stores, the depth map of the same
view is rendered from the object's points; the depth features of one view are ranked against
the CLIP image features of all objects at that view. Top-1 is the fraction of objects whose
own RGB render ranks first, averaged over views. Before pre-training the depth encoder is
CLIP's image tower itself; after, it is the CLIP2Point depth tower.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from c2p import schema
from c2p.sharddir import SHARD_GLOB, list_shard_tars


@dataclass
class HeldOut:
    """Decoded held-out shards: points [N,P,3] float32, rgb [N,V,H,W,3] uint8, views [N,V,3] (elev, azim, dist)."""

    keys: list[str]
    points: Tensor
    rgb: np.ndarray
    views: Tensor


def _used_member(name: str) -> bool:
    """Whether retrieval reads the tar member ``<key>.<member>``: depth previews, image features
    and captions are skipped unread."""
    member = name.split(".", 1)[1] if "." in name else name
    return member in ("meta.json", "points.npy") or member.startswith("rgb.")


def load_heldout(shard_dir: str | Path, points: int = 1024, seed: int = 0) -> HeldOut:
    """Every sample of the ``shard-*.tar`` files in ``shard_dir``, in key order; ``points`` per
    object subsampled without replacement from ``seed`` (all of them when an object has fewer).

    ``shard_dir``: a shard directory or an ``s3://bucket/prefix`` the render job wrote; the tars
    of a bucket are streamed (the loader's reader), not downloaded first.
    Returns points [N,P,3] float32, rgb [N,V,H,W,3] uint8 and views [N,V,3] (elev°, azim°, dist).
    Raises FileNotFoundError when ``shard_dir`` holds no shard, ValueError for a malformed
    address, RuntimeError naming the shard when one cannot be read whole (a retrieval score over
    part of the objects would mislead), or naming the shard, sample and member when a member
    does not decode.
    """
    from c2p.data.reader import CorruptSample, decode_member, read_shard

    paths = list_shard_tars(shard_dir)
    if not paths:
        raise FileNotFoundError(f"no {SHARD_GLOB} in {shard_dir}; expected the output of the render job "
                                "(c2p-render --out DIR or --out s3://bucket/prefix)")
    samples = []
    for path in paths:
        try:
            samples.extend(read_shard(path, select=_used_member))
        except (tarfile.TarError, OSError, ValueError) as e:  # not a tar, truncated, unreadable, a repeated member
            raise RuntimeError(f"held-out shard {path}: {type(e).__name__}: {e}; expected a whole tar") from e
    samples.sort(key=lambda s: s["__key__"])
    rng = np.random.default_rng(seed)
    keys, pts, rgbs, views = [], [], [], []
    for sample in samples:
        try:
            meta = decode_member(sample, "meta.json", schema.SampleMeta.from_json)
            p = decode_member(sample, "points.npy", schema.decode_points)
            vids = schema.rgb_views(sample)
            rgb = [decode_member(sample, schema.rgb_member(sample, v), schema.decode_image) for v in vids]
        except CorruptSample as e:  # as for a damaged tar: a score over part of the objects would mislead
            raise RuntimeError(f"held-out {e}; expected whole samples written by the render job") from e
        p = p[rng.choice(len(p), size=min(points, len(p)), replace=False)]
        keys.append(sample["__key__"])
        pts.append(p)
        rgbs.append(np.stack(rgb))
        views.append(np.asarray([meta.views[v] for v in vids], dtype=np.float32))
    return HeldOut(keys, torch.from_numpy(np.stack(pts)), np.stack(rgbs), torch.from_numpy(np.stack(views)))


@torch.no_grad()
def depth_image_retrieval(data: HeldOut, image_tower: nn.Module, depth_tower: nn.Module, image_size: int, radius: float = 0.02) -> dict:
    """Top-1 depth→image retrieval over the held-out objects, per view and averaged.

    ``image_tower``/``depth_tower``: [B,3,S,S] → [B,D]. Returns ``{"top1": float, "per_view": [V floats], "objects": N}``.
    """
    from c2p.imagenorm import normalize_rgb
    from c2p.render import normalize_depth, render_depth

    image_tower.eval()
    depth_tower.eval()
    per_view = []
    for v in range(data.views.shape[1]):
        elev, azim, dist = data.views[:, v, 0:1], data.views[:, v, 1:2], data.views[:, v, 2:3]  # [N,1] each
        depth = normalize_depth(render_depth(data.points, elev, azim, dist, image_size=image_size, radius=radius))[:, 0]
        f_d = F.normalize(depth_tower(depth).float(), dim=-1)
        f_i = F.normalize(image_tower(normalize_rgb(torch.from_numpy(data.rgb[:, v]), image_size)).float(), dim=-1)
        hits = (f_d @ f_i.T).argmax(dim=1) == torch.arange(len(f_d))
        per_view.append(hits.float().mean().item())
    return {"top1": float(np.mean(per_view)), "per_view": per_view, "objects": len(data.keys)}
