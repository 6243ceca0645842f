"""Contrastive losses of CLIP2Point.

:class:`NTXentLoss` is the SimCLR form the original code took from lightly: for N pairs
``(a_i, b_i)`` each of the 2N embeddings is an anchor whose positive is its partner and
whose negatives are the other 2N−2 embeddings of both sets (2N−1 candidates in all),
cross-entropy at temperature τ, mean over the 2N anchors.

:class:`CLIP2PointLoss` combines a cross-modality term (depth vs image) and an
intra-modality term (depth view 1 vs depth view 2) with a learnable weight w::

    L = L_cross + L_intra / w² + log(w + 1),     w initialised to 1

Negatives are per rank, as in the original, or gathered from all ranks (``gather=True``):
each rank then scores its own anchors against the candidates of every rank, with gradients
flowing back through the gather, so that the mean of the per-rank losses, and the summed
gradients, equal those of one process holding the whole global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _gather_with_grad(x: Tensor) -> tuple[Tensor, int]:
    """``x`` [n,D] of every rank concatenated in rank order [W·n,D], and this rank's index.

    Needs equal n on all ranks (a fixed per-rank batch). Gradients flow back to each rank's
    own slice (summed over the ranks that used it).
    """
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_fn

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    return torch.cat(dist_fn.all_gather(x), dim=0), dist.get_rank()


def ntxent(a: Tensor, b: Tensor, temperature: float = 0.07, gather: bool = False) -> Tensor:
    """SimCLR NT-Xent loss of paired embeddings (functional form of :class:`NTXentLoss`).

    a, b: [N,D] float, row i of a and row i of b are a positive pair (not necessarily
    normalised: both are L2-normalised here). Returns a scalar: mean over the 2N local
    anchors of −log softmax of the positive among 2M−1 candidates, M = N (or W·N with
    ``gather``).
    """
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"NT-Xent inputs: shapes {tuple(a.shape)} and {tuple(b.shape)}; expected two equal [N,D]")
    n = a.shape[0]
    a = F.normalize(a.float(), dim=1)
    b = F.normalize(b.float(), dim=1)
    if gather:
        a_all, rank = _gather_with_grad(a)
        b_all, _ = _gather_with_grad(b)
    else:
        a_all, b_all, rank = a, b, 0
    offset = rank * n
    # self-similarity of each anchor (its own column in a_all / b_all) is not a candidate
    self_mask = torch.zeros(n, a_all.shape[0], dtype=torch.bool, device=a.device)
    self_mask[torch.arange(n, device=a.device), torch.arange(n, device=a.device) + offset] = True
    ab = a @ b_all.T / temperature  # [n, M]: positives on the shifted diagonal
    aa = (a @ a_all.T / temperature).masked_fill(self_mask, float("-inf"))
    ba = b @ a_all.T / temperature
    bb = (b @ b_all.T / temperature).masked_fill(self_mask, float("-inf"))
    # rows: anchors a_i then b_i; columns: the partner set, then the own set (self masked)
    logits = torch.cat([torch.cat([ab, aa], dim=1), torch.cat([ba, bb], dim=1)], dim=0)
    labels = (torch.arange(n, device=a.device) + offset).repeat(2)
    return F.cross_entropy(logits, labels)


class NTXentLoss(nn.Module):
    """NT-Xent (SimCLR form, τ = 0.07 by default): ``loss(a [N,D], b [N,D]) -> scalar``.

    ``gather=True`` all-gathers a and b across torch.distributed ranks (with gradients) so the
    negatives are the whole global batch; each rank's loss is over its own 2N anchors.
    Without an initialised process group it is the local loss.
    """

    def __init__(self, temperature: float = 0.07, gather: bool = False):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"NT-Xent temperature {temperature!r}; expected > 0")
        self.temperature = float(temperature)
        self.gather = bool(gather)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return ntxent(a, b, self.temperature, self.gather)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather={self.gather}"


class CLIP2PointLoss(nn.Module):
    """Cross- plus intra-modality NT-Xent with the learnable weight w of the original.

    ``forward(depth1 [B,D], depth2 [B,D], image [B,D]) -> dict`` with
    ``loss``, ``loss_cross`` = NTX(F_D, F_I) where F_D = (depth1 + depth2) / 2 (raw features,
    normalised inside the loss, as the original), ``loss_intra`` = NTX(depth1, depth2) and
    ``w``. With ``intra=False`` (the paper's ablation) loss = loss_cross, loss_intra is still
    reported (no gradient) and w is frozen.

    w is a 1-element parameter (shape [1], not 0-d, so every ZeRO stage can partition it).
    """

    def __init__(self, temperature: float = 0.07, intra: bool = True, global_negatives: bool = False):
        super().__init__()
        self.ntxent = NTXentLoss(temperature, gather=global_negatives)
        self.intra = bool(intra)
        self.w = nn.Parameter(torch.ones(1), requires_grad=self.intra)

    def forward(self, depth1: Tensor, depth2: Tensor, image: Tensor) -> dict[str, Tensor]:
        depth = (depth1 + depth2) * 0.5
        loss_cross = self.ntxent(depth, image.detach())
        w = self.w[0]
        if self.intra:
            loss_intra = self.ntxent(depth1, depth2)
            loss = loss_cross + loss_intra / w**2 + torch.log(w + 1)
        else:
            with torch.no_grad():
                loss_intra = self.ntxent(depth1, depth2)
            loss = loss_cross
        return {"loss": loss, "loss_cross": loss_cross, "loss_intra": loss_intra, "w": w.detach()}
