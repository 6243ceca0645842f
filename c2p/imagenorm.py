"""CLIP's image input: its mean/std and the step from stored RGB renders to the image tower's tensor.

Pure torch and nothing else, so the streaming loader, the feature actors and retrieval can
normalise images without importing a renderer; the depth renderer applies the same mean/std
to its depth images (:func:`c2p.render.normalize_depth`).
"""

from __future__ import annotations

import torch

__all__ = ["CLIP_MEAN", "CLIP_STD", "normalize_rgb"]

#: CLIP's image normalisation (OpenAI CLIP, also open_clip's OPENAI_DATASET_MEAN/STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize_rgb(rgb: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """RGB renders uint8 ``[B,H,W,3]`` -> CLIP-normalised float32 ``[B,3,S,S]`` on ``rgb.device``.

    Resized (bicubic, antialiased, clamped to [0, 1]) to ``size`` pixels when given and different,
    as the image tower's input; then ``(x/255 - CLIP_MEAN) / CLIP_STD``.
    """
    if rgb.dim() != 4 or rgb.shape[-1] != 3:
        raise ValueError(f"normalize_rgb: rgb has shape {tuple(rgb.shape)}, expected [B,H,W,3]")
    x = rgb.permute(0, 3, 1, 2).float().div_(255.0)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std).contiguous()
