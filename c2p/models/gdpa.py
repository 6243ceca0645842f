"""Gated Dual-Path Adapter (GDPA): the CLIP2Point few-shot / supervised classifier head.

Two frozen visual towers see the same V depth views of a point cloud: the original CLIP image
tower and the CLIP2Point depth tower. The towers never run here: the adapter takes their
per-view features (computed once and cached by :mod:`c2p.eval.features`), so an epoch costs
only this module. Per path a global-view aggregator turns the V view features into one
feature; each path gives cosine logits against the frozen, normalised CLIP text features of
the class names, and a learned gate mixes the two paths' logits:

    logits = scale * (g * cos(agg_clip(F_clip), T) + (1 - g) * cos(agg_depth(F_depth), T))

with ``g = sigmoid(gate_logit)`` started at 0.5 (the released code averages the two paths).
``paths="clip"`` or ``"depth"`` keeps one path alone (the paper's ablation); the gate is then
fixed at 1 or 0 and has no parameter.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GlobalViewAggregator", "GatedDualPathAdapter", "PATHS"]

PATHS = ("both", "clip", "depth")


class GlobalViewAggregator(nn.Module):
    """V view features → one object feature.

    Learnable per-view weights (init 1) scale each view, then
    BatchNorm(V·D) → Dropout → Linear(V·D→D) → BatchNorm(D) → ReLU → Dropout → Linear(D→D).
    """

    def __init__(self, num_views: int, dim: int, dropout: float = 0.5):
        super().__init__()
        self.num_views, self.dim = num_views, dim
        self.view_weights = nn.Parameter(torch.ones(num_views))
        self.net = nn.Sequential(
            nn.BatchNorm1d(num_views * dim),
            nn.Dropout(dropout),
            nn.Linear(num_views * dim, dim),
            nn.BatchNorm1d(dim),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(dim, dim),
        )

    def forward(self, views: Tensor) -> Tensor:
        """views: [B,V,D] float per-view features → [B,D] (not normalised)."""
        if views.dim() != 3 or views.shape[1:] != (self.num_views, self.dim):
            raise ValueError(f"view features: got shape {list(views.shape)}; expected [B, {self.num_views}, {self.dim}]")
        weighted = views * self.view_weights.view(1, -1, 1)
        return self.net(weighted.flatten(1))


class GatedDualPathAdapter(nn.Module):
    """Trainable head over frozen CLIP and depth view features.

    Args:
        text_features: [C,D] float, class-name text features (normalised here; frozen buffer).
        num_views: V, number of depth views per object.
        paths: "both" (gated), "clip" or "depth" (one path alone).
        dropout: dropout of the aggregators.
        gate_init: initial weight g of the CLIP path (released code: 0.5), clamped to (1e-4, 1-1e-4).
        logit_scale: multiplier of the cosine logits (CLIP's ``logit_scale.exp()``, ~100 when trained).
    """

    def __init__(
        self,
        text_features: Tensor,
        num_views: int,
        paths: str = "both",
        dropout: float = 0.5,
        gate_init: float = 0.5,
        logit_scale: float = 1.0 / 0.07,
    ):
        super().__init__()
        if paths not in PATHS:
            raise ValueError(f"GDPA paths: got {paths!r}; expected one of {', '.join(PATHS)}")
        if text_features.dim() != 2:
            raise ValueError(f"text_features: got shape {list(text_features.shape)}; expected [C, D]")
        self.paths = paths
        dim = text_features.shape[1]
        self.num_views, self.dim, self.num_classes = num_views, dim, text_features.shape[0]
        self.register_buffer("text_features", F.normalize(text_features.detach().float(), dim=-1))
        self.logit_scale = float(logit_scale)
        self.clip_path = GlobalViewAggregator(num_views, dim, dropout) if paths in ("both", "clip") else None
        self.depth_path = GlobalViewAggregator(num_views, dim, dropout) if paths in ("both", "depth") else None
        if paths == "both":
            g = min(max(float(gate_init), 1e-4), 1 - 1e-4)
            # the gate is a sigmoid so it stays a convex weight whatever the optimiser does
            self.gate_logit = nn.Parameter(torch.tensor(math.log(g / (1 - g))))
        else:
            self.gate_logit = None

    @property
    def gate(self) -> float:
        """Current weight g of the CLIP path (1 - g goes to the depth path)."""
        if self.gate_logit is None:
            return 1.0 if self.paths == "clip" else 0.0
        return float(torch.sigmoid(self.gate_logit.detach()))

    def path_logits(self, path: nn.Module, views: Tensor) -> Tensor:
        """[B,V,D] → [B,C] cosine similarities (unscaled) of the aggregated feature with each class."""
        return F.normalize(path(views.float()), dim=-1) @ self.text_features.t()

    def forward(self, clip_views: Tensor | None = None, depth_views: Tensor | None = None) -> Tensor:
        """clip_views, depth_views: [B,V,D] per-view features of the two towers → logits [B,C].

        A path not used by ``paths`` may be passed as None.
        """
        if self.clip_path is not None and clip_views is None:
            raise ValueError(f"GDPA paths={self.paths!r} needs clip_views; got None")
        if self.depth_path is not None and depth_views is None:
            raise ValueError(f"GDPA paths={self.paths!r} needs depth_views; got None")
        if self.paths == "clip":
            cos = self.path_logits(self.clip_path, clip_views)
        elif self.paths == "depth":
            cos = self.path_logits(self.depth_path, depth_views)
        else:
            g = torch.sigmoid(self.gate_logit)
            cos = g * self.path_logits(self.clip_path, clip_views) + (1 - g) * self.path_logits(self.depth_path, depth_views)
        return self.logit_scale * cos

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy of logits [B,C] against labels [B] long."""
        return F.cross_entropy(logits, labels)
