"""Per-view features of a frozen visual tower, and their on-disk cache.

Evaluation and adapter training see an object only through its V depth views encoded by
frozen towers, so the expensive part (render + encode) is done once per (objects, tower,
view setting) and cached on disk under a hash of all of them; a few-shot sweep of 5 K × 3
seeds × 100 epochs then costs only adapter steps.

    setting = ViewSetting(views="10", image_size=224, radius=0.02)
    feats = ViewFeatureCache(cache_dir(cfg)).features(split.points, visual, setting)   # [N,V,D]
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from c2p.config.downstream import DownstreamConfig

__all__ = ["ViewSetting", "render_views", "encode_views", "module_hash", "ViewFeatureCache", "cache_dir"]

log = logging.getLogger(__name__)

# bump when the rendering or encoding code changes what a cached feature means
FEATURE_VERSION = "1"


@dataclass(frozen=True)
class ViewSetting:
    """How points become depth images. views: "10" or "6" (the original sets); image_size in pixels;
    radius in NDC units; dist: camera distance."""

    views: str = "10"  # "10" or "6"
    image_size: int = 224
    radius: float = 0.02
    dist: float = 1.0

    @property
    def num_views(self) -> int:
        """V, the number of views of the set."""
        from c2p.camera import views

        return int(views(self.views).shape[0])


def render_views(points: Tensor, setting: ViewSetting) -> Tensor:
    """points: [B,N,3] float, unit sphere, y-up → [B,V,3,H,W] CLIP-normalised depth images."""
    from c2p.camera import views
    from c2p.render import normalize_depth, render_depth

    ev = views(setting.views).to(points.device)
    zbuf = render_depth(points, ev[:, 0], ev[:, 1], setting.dist, image_size=setting.image_size, radius=setting.radius)
    return normalize_depth(zbuf)


@torch.no_grad()
def encode_views(points: Tensor, visual: nn.Module, setting: ViewSetting, batch_size: int = 64, device: str | torch.device = "cpu") -> Tensor:
    """points: [N,P,3] float → [N,V,D] float32 features (not normalised) of ``visual`` on each depth view.

    ``visual`` maps [B,3,H,W] images to [B,D] (an open_clip visual tower or DepthEncoder).
    Rendering and encoding run on ``device`` in chunks of ``batch_size`` objects.
    """
    was_training = visual.training
    visual.eval()
    out = []
    try:
        for start in range(0, points.shape[0], batch_size):
            pts = points[start : start + batch_size].to(device)
            imgs = render_views(pts, setting)  # [b,V,3,H,W]
            b, v = imgs.shape[:2]
            feats = visual(imgs.flatten(0, 1))
            if isinstance(feats, (tuple, list)):  # towers that also return tokens
                feats = feats[0]
            out.append(feats.float().reshape(b, v, -1).cpu())
    finally:
        visual.train(was_training)
    return torch.cat(out)


def _update_tensor(h, t: Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{list(t.shape)}".encode())
    # reshape(-1): a 0-d tensor cannot be viewed as bytes
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def module_hash(module: nn.Module) -> str:
    """sha256 (16 hex) of a module's class and state dict: identifies a tower's weights."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for k, v in module.state_dict().items():
        h.update(k.encode())
        _update_tensor(h, v)
    return h.hexdigest()[:16]


class ViewFeatureCache:
    """Disk cache of :func:`encode_views` keyed by a hash of (points, tower weights, view setting).

    A file is written under a temporary name and renamed, so a crashed job never leaves a half
    entry and concurrent array tasks computing the same entry do not corrupt each other.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def key(self, points: Tensor, visual: nn.Module, setting: ViewSetting) -> str:
        """24 hex of sha256 over (feature version, setting, tower weights, points [N,P,3])."""
        h = hashlib.sha256(f"v{FEATURE_VERSION}|{setting}|{module_hash(visual)}".encode())
        _update_tensor(h, points.float())
        return h.hexdigest()[:24]

    def features(self, points: Tensor, visual: nn.Module, setting: ViewSetting, batch_size: int = 64, device: str | torch.device = "cpu") -> Tensor:
        """[N,P,3] → [N,V,D] float32, from the cache when present."""
        path = self.root / f"{self.key(points, visual, setting)}.pt"
        if path.is_file():
            try:
                feats = torch.load(path, map_location="cpu", weights_only=True)
                if feats.shape[0] == points.shape[0]:
                    self.hits += 1
                    return feats
            except Exception as e:  # a corrupt entry is recomputed, not fatal
                log.warning("feature cache entry %s unreadable (%s): recomputing", path, e)
        self.misses += 1
        feats = encode_views(points, visual, setting, batch_size=batch_size, device=device)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(feats, tmp)
        os.replace(tmp, path)
        return feats


def cache_dir(cfg: DownstreamConfig) -> Path:
    """View-feature cache directory (``encoder.cache_dir`` or ``<run.dir>/<run.name>/cache/features``)."""
    if cfg.encoder.cache_dir:
        return Path(cfg.encoder.cache_dir)
    return Path(cfg.run.dir) / cfg.run.name / "cache" / "features"
