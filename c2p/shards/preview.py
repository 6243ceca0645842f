"""``previews/``: contact sheets of the first samples of a render, read back from the shards.

Read from the finished tars (not from the renderer's memory) with the loader's reader
(:func:`c2p.data.reader.read_shard`), a preview shows what a reader of the shards gets: the
decoded RGB views and, when stored, the point-cloud depth of each view beside them — a quick
look tells whether renders and depth maps pair up.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np

from c2p.data.reader import read_shard
from c2p.schema import SampleMeta, ShardIndex, decode_image, rgb_member, rgb_views
from c2p.sharddir import ShardDir


def _points_depth(points_npy: bytes, views: list[list[float]], size: int) -> np.ndarray:
    """``points.npy`` bytes + V (elev, azim, dist) → float32 [V,size,size] z-buffers (background -1)."""
    import torch

    from c2p.render import render_depth
    from c2p.schema import decode_points

    pts = torch.from_numpy(decode_points(points_npy))[None]
    v = torch.tensor(views, dtype=torch.float32)
    return render_depth(pts, v[:, 0], v[:, 1], v[:, 2], image_size=size).numpy()[0]


def write_previews(out: str | Path, index: ShardIndex, count: int, per_sheet: int = 8, *,
                   source: str | None = None) -> list[Path]:
    """Contact sheets ``previews/preview-XXX.png`` of the first ``count`` samples of ``out``.

    ``source``: where the tars are when not in ``out`` (the ``s3://`` prefix a render uploaded
    them to; ``out`` is then its local stage). Returns the sheet paths. Depth (uint16 mm in the
    shard) goes back to a float z-buffer with background -1, as ``render_depth`` returns it.
    """
    from c2p import storage
    from c2p.render import write_contact_sheet

    # a few samples from each shard: with few shards read, a preview still shows several classes
    shards = [storage.join(source, name) for name in sorted(index.shards)] if source else index.shard_paths(out)
    per_shard = -(-count // max(1, len(shards)))
    samples: list[dict[str, bytes]] = []
    for shard in shards:
        if len(samples) >= count:
            break
        samples += islice(read_shard(shard), min(per_shard, count - len(samples)))
    samples = [s for s in samples if rgb_views(s)]
    shard_dir = ShardDir(out)
    shard_dir.previews.mkdir(exist_ok=True)
    paths = []
    for start in range(0, len(samples), per_sheet):
        chunk = samples[start : start + per_sheet]
        rgb, depth, titles = [], [], []
        for s in chunk:
            views = rgb_views(s)
            rgb.append(np.stack([decode_image(s[rgb_member(s, v)]) for v in views]))
            meta = SampleMeta.from_json(s["meta.json"])
            if all(f"depth.{v}.png" in s for v in views):
                mm = np.stack([decode_image(s[f"depth.{v}.png"]).astype(np.float32) for v in views])
                depth.append(np.where(mm > 0, mm / 1000.0, -1.0).astype(np.float32))
            elif "points.npy" in s:  # no stored depth: the point-cloud depth pre-training will render
                depth.append(_points_depth(s["points.npy"], [meta.views[v] for v in views], rgb[-1].shape[1]))
            titles.append(f"{meta.label} {meta.uid}")
        path = shard_dir.preview(start // per_sheet)
        write_contact_sheet(path, rgb, depth if len(depth) == len(rgb) else None, titles)
        paths.append(path)
    return paths
