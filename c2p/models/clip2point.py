"""The CLIP2Point depth tower and the module that pre-trains it.

The depth tower starts as a copy of CLIP's visual tower and learns to map depth maps to
where CLIP puts the RGB image of the same view. :class:`CLIP2PointModel` is what the
DeepSpeed engine wraps: the depth tower plus the loss's learnable weight w. The frozen
image tower stays outside it (or is skipped when the shards carry precomputed ``imgfeat``),
so its features come in as a tensor.
"""

from __future__ import annotations

from copy import deepcopy

import torch
from torch import Tensor, nn

from c2p.losses import CLIP2PointLoss


class DepthEncoder(nn.Module):
    """A trainable copy of a CLIP visual tower: ``forward(images [B,3,H,W]) -> [B,D]`` raw
    (unnormalised) features; images are CLIP-normalised depth maps (``c2p.render.normalize_depth``).
    """

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = deepcopy(visual)
        self.visual.requires_grad_(True)

    def forward(self, images: Tensor) -> Tensor:
        return self.visual(images)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing inside the tower's transformer (open_clip's switch)."""
        self.visual.set_grad_checkpointing(enable)


class CLIP2PointModel(nn.Module):
    """Depth tower + CLIP2Point loss (holding w): the trainable module of pre-training.

    ``visual``: a CLIP visual tower (``create_clip(...).visual``); it is copied, not shared.
    ``temperature``, ``intra``, ``global_negatives``: see :class:`c2p.losses.CLIP2PointLoss`.
    """

    def __init__(self, visual: nn.Module, temperature: float = 0.07, intra: bool = True,
                 global_negatives: bool = False, grad_checkpointing: bool = False):
        super().__init__()
        self.depth = DepthEncoder(visual)
        self.loss = CLIP2PointLoss(temperature, intra=intra, global_negatives=global_negatives)
        if grad_checkpointing:
            self.depth.set_grad_checkpointing(True)

    def forward(self, depth_pair: Tensor, image_feat: Tensor) -> dict[str, Tensor]:
        """One pre-training step's losses and metrics.

        depth_pair: [B,2,3,H,W] float, two augmented CLIP-normalised depth maps per object
        (``c2p.render.render_depth_pair``); image_feat: [B,D] frozen image-tower features of
        the matching RGB view (normalised or not). Returns ``loss`` (to back-propagate),
        ``loss_cross``, ``loss_intra``, ``w`` and ``retrieval_top1`` (fraction of this rank's
        objects whose F_D is nearest, by cosine, to its own image among the batch), all scalars.
        """
        if depth_pair.ndim != 5 or depth_pair.shape[1] != 2:
            raise ValueError(f"depth_pair: shape {tuple(depth_pair.shape)}; expected [B,2,3,H,W]")
        if image_feat.ndim != 2 or image_feat.shape[0] != depth_pair.shape[0]:
            raise ValueError(f"image_feat: shape {tuple(image_feat.shape)}; expected [{depth_pair.shape[0]},D]")
        b = depth_pair.shape[0]
        # one pass over both views (as the original): batch statistics and speed
        feats = self.depth(depth_pair.transpose(0, 1).reshape(2 * b, *depth_pair.shape[2:]))
        depth1, depth2 = feats[:b], feats[b:]
        out = self.loss(depth1, depth2, image_feat)  # the loss computes in fp32 whatever the towers' dtype
        out["retrieval_top1"] = retrieval_top1((depth1 + depth2).detach() * 0.5, image_feat.detach())
        return out

    def depth_tower_state_dict(self) -> dict[str, Tensor]:
        """The depth tower's weights with the keys of a plain open_clip visual tower
        (``create_clip(name).visual.load_state_dict(sd)`` works); detached CPU tensors."""
        return {k: v.detach().cpu().clone() for k, v in self.depth.visual.state_dict().items()}


@torch.no_grad()
def retrieval_top1(query: Tensor, keys: Tensor) -> Tensor:
    """In-batch retrieval accuracy: fraction of rows i of ``query`` [B,D] whose most
    cosine-similar row of ``keys`` [B,D] is row i. Chance is 1/B."""
    sim = nn.functional.normalize(query.float(), dim=1) @ nn.functional.normalize(keys.float(), dim=1).T
    return (sim.argmax(dim=1) == torch.arange(sim.shape[0], device=sim.device)).float().mean()
