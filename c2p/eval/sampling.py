"""How an evaluation protocol takes N points from a stored cloud: the first N, farthest-point
sampling, or a seeded random draw. Protocols differ here (the PointNet/DGCNN loaders take
the first 1024 of 2048; OpenShape takes all 10,000), and the depth maps, so the accuracy, follow.

    idx = sample_indices(points, 1024, "fps", generator)    # [1024] long into points [P,3]

Every method is a pure function of (points, n, generator): the same object gives the same
points in every process, and the view-feature cache keyed on them stays valid.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SAMPLING", "sample_indices", "farthest_point_indices"]

SAMPLING = ("first", "fps", "random")


def farthest_point_indices(points: Tensor, n: int) -> Tensor:
    """points: [P,3] float → [min(n,P)] long: farthest-point sampling starting at point 0
    (deterministic; implementations that start at a random point differ only in that choice)."""
    p = points.shape[0]
    n = min(n, p)
    idx = torch.zeros(n, dtype=torch.long)
    dist = torch.full((p,), float("inf"), dtype=points.dtype)
    last = 0
    for i in range(1, n):
        dist = torch.minimum(dist, (points - points[last]).square().sum(dim=1))
        last = int(dist.argmax())
        idx[i] = last
    return idx


def sample_indices(points: Tensor, n: int, method: str, generator: torch.Generator) -> Tensor:
    """[n] long indices into ``points`` [P,3] by ``method`` (first | fps | random).

    With fewer stored points than asked (P < n), all P are kept and the rest repeat: cycling
    for first/fps, drawn from ``generator`` for random (a depth splat of a repeated point
    changes nothing). ``generator`` is used only by random.
    """
    if method not in SAMPLING:
        raise ValueError(f"sampling: got {method!r}; expected one of {list(SAMPLING)}")
    if n < 1:
        raise ValueError(f"sampling: n = {n}; expected n >= 1")
    p = points.shape[0]
    if method == "random":
        if p >= n:
            return torch.randperm(p, generator=generator)[:n]
        return torch.cat([torch.arange(p), torch.randint(p, (n - p,), generator=generator)])
    base = torch.arange(min(n, p)) if method == "first" else farthest_point_indices(points, n)
    if p >= n:
        return base
    return base[torch.arange(n) % p]
