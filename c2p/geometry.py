"""Point-cloud geometry basics, batched torch: unit-sphere normalisation, area-weighted
surface sampling, farthest-point sampling and random subsampling.

All functions run on the device of their input and never move data between devices.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["normalize_unit_sphere", "sample_surface", "farthest_point_sample", "subsample", "gather_points"]

# Below this radius a cloud is a single point: it is centred but not scaled (no division by ~0).
_EPS = 1e-12


def normalize_unit_sphere(points: Tensor) -> Tensor:
    """Centre each cloud on its mean and scale it so its farthest point has norm 1.

    The mean (not the bounding-box centre) is used because the original's ``pc_normalize``
    (Point-BERT / CLIP2Point data loaders) does so; ShapeNet-55 clouds are stored that way.

    points: [..., N, 3] float, any units. Returns [..., N, 3] float, same dtype and device,
    max norm 1 per cloud (a degenerate cloud of identical points becomes all zeros).
    """
    if points.ndim < 2 or points.shape[-1] != 3:
        raise ValueError(f"points: shape {tuple(points.shape)}, expected [..., N, 3]")
    if points.shape[-2] == 0:
        raise ValueError("points: N = 0, expected at least one point")
    centred = points - points.mean(dim=-2, keepdim=True)
    radius = centred.norm(dim=-1).amax(dim=-1, keepdim=True).unsqueeze(-1)
    return centred / radius.clamp_min(_EPS)


def sample_surface(
    vertices: Tensor, faces: Tensor, n: int, generator: torch.Generator | None = None
) -> Tensor:
    """Sample ``n`` points uniformly over a triangle mesh's surface (area-weighted).

    vertices: [V, 3] float; faces: [F, 3] long indices into vertices; n: points wanted.
    generator: torch generator on the vertices' device (None: global RNG).
    Returns [n, 3] float, same dtype/device as vertices.
    Raises ValueError for an empty mesh, out-of-range indices or zero total area.
    """
    if vertices.ndim != 2 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices: shape {tuple(vertices.shape)}, expected [V, 3]")
    if faces.ndim != 2 or faces.shape[-1] != 3 or faces.shape[0] == 0:
        raise ValueError(f"faces: shape {tuple(faces.shape)}, expected [F, 3] with F > 0")
    if n < 0:
        raise ValueError(f"n: {n}, expected n >= 0")
    faces = faces.long()
    if int(faces.min()) < 0 or int(faces.max()) >= vertices.shape[0]:
        raise ValueError(
            f"faces: indices in [{int(faces.min())}, {int(faces.max())}], expected [0, {vertices.shape[0] - 1}]"
        )
    tri = vertices[faces]  # [F, 3 corners, 3]
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    areas = torch.linalg.cross(b - a, c - a).norm(dim=-1) * 0.5  # [F]
    total = float(areas.sum())
    if not total > 0.0:  # also catches NaN
        raise ValueError(f"mesh: total surface area {total}, expected > 0 and finite")
    idx = torch.multinomial(areas.double(), n, replacement=True, generator=generator)  # [n]
    u = torch.rand(n, 1, generator=generator, device=vertices.device, dtype=vertices.dtype)
    v = torch.rand(n, 1, generator=generator, device=vertices.device, dtype=vertices.dtype)
    # sqrt(u) warp makes barycentric samples uniform over the triangle (Osada et al. 2002).
    su = u.sqrt()
    w0, w1, w2 = 1.0 - su, su * (1.0 - v), su * v
    return w0 * a[idx] + w1 * b[idx] + w2 * c[idx]


def farthest_point_sample(points: Tensor, k: int) -> Tensor:
    """Iterative farthest-point sampling, batched.

    Starts from point 0 of every cloud (as the pointnet2 CUDA op used by Point-BERT), so the
    result is deterministic. points: [B, N, 3] float; k: 1 <= k <= N.
    Returns LongTensor [B, k] of indices into N (use :func:`gather_points`).
    """
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ValueError(f"points: shape {tuple(points.shape)}, expected [B, N, 3]")
    b, n, _ = points.shape
    if not 1 <= k <= n:
        raise ValueError(f"k: {k}, expected 1 <= k <= N = {n}")
    idx = torch.zeros(b, k, dtype=torch.long, device=points.device)
    # Squared distance of every point to the chosen set so far.
    dist = torch.full((b, n), float("inf"), dtype=points.dtype, device=points.device)
    batch = torch.arange(b, device=points.device)
    farthest = torch.zeros(b, dtype=torch.long, device=points.device)
    for i in range(k):
        idx[:, i] = farthest
        centre = points[batch, farthest].unsqueeze(1)  # [B, 1, 3]
        dist = torch.minimum(dist, ((points - centre) ** 2).sum(-1))
        farthest = dist.argmax(dim=-1)
    return idx


def gather_points(points: Tensor, idx: Tensor) -> Tensor:
    """points: [B, N, C]; idx: [B, K] long. Returns [B, K, C]."""
    return torch.gather(points, 1, idx.unsqueeze(-1).expand(-1, -1, points.shape[-1]))


def subsample(points: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """Random subset of ``k`` distinct points of every cloud (without replacement).

    points: [B, N, 3] float; k: 1 <= k <= N; generator on points' device (None: global RNG).
    Returns [B, k, 3] float.
    """
    if points.ndim != 3:
        raise ValueError(f"points: shape {tuple(points.shape)}, expected [B, N, 3]")
    b, n, _ = points.shape
    if not 1 <= k <= n:
        raise ValueError(f"k: {k}, expected 1 <= k <= N = {n}")
    keys = torch.rand(b, n, generator=generator, device=points.device)
    idx = keys.argsort(dim=1)[:, :k]
    return gather_points(points, idx)
