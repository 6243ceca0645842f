"""One camera module for both renderers: PyTorch3D's look-at conventions and the original's view sets.

Conventions (PyTorch3D's, which CLIP2Point used):

- World space is y-up. A camera at ``(dist, elev, azim)`` (degrees) sits at
  ``dist * (cos(elev) sin(azim), sin(elev), cos(elev) cos(azim))`` and looks at the origin.
- World to view with row vectors: ``X_view = X_world @ R + T``. View space has +X left, +Y up
  and +Z pointing from the camera into the scene (so visible points have z > 0).
- NDC: +X left, +Y up, the square image spans [-1, 1] on both axes; pixel ``(row i, col j)`` of
  an ``S x S`` image has its centre at ``x = -1 + (2 (S-1-j) + 1) / S``,
  ``y = -1 + (2 (S-1-i) + 1) / S`` (row 0 is the top, column 0 the left of the image).

Depth maps (``c2p.render.render_depth``) use the orthographic camera, RGB renders
(``c2p.render.MeshRenderer``) the perspective one (field of view 60 degrees, PyTorch3D's
``FoVPerspectiveCameras`` default); both build their rotation with :func:`look_at_view_transform`
so a depth map and an RGB render of one view share its direction, up vector and left/right.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch
import torch.nn.functional as F

__all__ = [
    "VIEWS_10",
    "VIEWS_6",
    "views",
    "camera_position_from_spherical_angles",
    "look_at_rotation",
    "look_at_view_transform",
    "world_to_view",
    "rotate_zup_to_yup",
]

Scalars = Union[float, Sequence[float], torch.Tensor]

#: The original's 10 views, (elevation, azimuth) in degrees, camera distance 1.
VIEWS_10 = torch.tensor(
    [[0, 0], [90, 0], [180, 0], [270, 0], [225, -45], [225, 45], [315, -45], [315, 45], [0, -90], [0, 90]],
    dtype=torch.float32,
)
#: The original's 6-view set (elevation, azimuth) in degrees.
VIEWS_6 = torch.tensor([[0, 0], [0, 90], [0, 180], [0, 270], [90, 0], [-90, 180]], dtype=torch.float32)


def views(name: str) -> torch.Tensor:
    """The named view set as a new ``[V,2]`` float tensor of (elev, azim) degrees; name is "10" or "6"."""
    sets = {"10": VIEWS_10, "6": VIEWS_6}
    key = str(name)
    if key not in sets:
        raise ValueError(f"views: name={name!r}, expected one of {sorted(sets)}")
    return sets[key].clone()


def _as_batch(*args: Scalars, device=None) -> list[torch.Tensor]:
    """Python scalars / sequences / tensors -> float32 tensors broadcast to one shape ``[K]``.

    float32 on purpose: PyTorch3D computes in float32, and at elev = +-90 the outcome of its
    degenerate-up-vector branch depends on the float32 rounding of cos(pi/2) (see look_at_rotation).
    """
    ts = []
    for a in args:
        t = a if torch.is_tensor(a) else torch.tensor(a, dtype=torch.float32)
        t = t.to(device=device if device is not None else t.device, dtype=torch.float32)
        ts.append(t.reshape(-1))
    if device is None:
        dev = next((t.device for t in ts if t.device.type != "cpu"), torch.device("cpu"))
        ts = [t.to(dev) for t in ts]
    k = max(t.numel() for t in ts)
    out = []
    for t in ts:
        if t.numel() not in (1, k):
            raise ValueError(f"camera arguments: sizes {[x.numel() for x in ts]} do not broadcast (expected 1 or {k} each)")
        out.append(t.expand(k) if t.numel() == 1 else t)
    return out


def camera_position_from_spherical_angles(dist: Scalars, elev: Scalars, azim: Scalars, degrees: bool = True, device=None) -> torch.Tensor:
    """Camera centres ``[K,3]`` in world space for distance, elevation and azimuth (PyTorch3D's formula)."""
    dist, elev, azim = _as_batch(dist, elev, azim, device=device)
    if degrees:
        elev = math.pi / 180.0 * elev
        azim = math.pi / 180.0 * azim
    x = dist * torch.cos(elev) * torch.sin(azim)
    y = dist * torch.sin(elev)
    z = dist * torch.cos(elev) * torch.cos(azim)
    return torch.stack([x, y, z], dim=1).view(-1, 3)


def look_at_rotation(camera_position: torch.Tensor, at=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)) -> torch.Tensor:
    """World-to-view rotations ``R [K,3,3]`` (row-vector convention) for cameras looking at ``at``.

    Reproduces PyTorch3D's ``look_at_rotation`` including its degenerate case: when the view
    direction is (anti)parallel to ``up`` (elev = +-90), x = up x z is (almost) zero; PyTorch3D
    normalises it with eps=1e-5 anyway, derives y from that tiny x, and then replaces x by y x z.
    The resulting image orientation at the poles therefore depends on azimuth (and on float32
    rounding), exactly as in the original renders.
    """
    c = camera_position.to(torch.float32).reshape(-1, 3)
    at_t = torch.as_tensor(at, dtype=torch.float32, device=c.device).reshape(-1, 3).expand_as(c)
    up_t = torch.as_tensor(up, dtype=torch.float32, device=c.device).reshape(-1, 3).expand_as(c)
    z_axis = F.normalize(at_t - c, eps=1e-5)
    x_axis = F.normalize(torch.cross(up_t, z_axis, dim=1), eps=1e-5)
    y_axis = F.normalize(torch.cross(z_axis, x_axis, dim=1), eps=1e-5)
    is_close = torch.isclose(x_axis, torch.tensor(0.0, device=c.device), atol=5e-3).all(dim=1, keepdim=True)
    if is_close.any():
        replacement = F.normalize(torch.cross(y_axis, z_axis, dim=1), eps=1e-5)
        x_axis = torch.where(is_close, replacement, x_axis)
    r = torch.cat((x_axis[:, None, :], y_axis[:, None, :], z_axis[:, None, :]), dim=1)
    return r.transpose(1, 2)


def look_at_view_transform(dist: Scalars = 1.0, elev: Scalars = 0.0, azim: Scalars = 0.0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch3D's ``look_at_view_transform`` (degrees, world y-up, looking at the origin).

    dist, elev, azim: scalars or ``[K]`` (broadcast against each other); angles in degrees.
    Returns ``R [K,3,3]`` and ``T [K,3]`` float32 with ``X_view = X_world @ R + T``
    (``T = -R^T C`` for the camera centre C, so the origin lies at view z = dist).
    """
    c = camera_position_from_spherical_angles(dist, elev, azim, device=device)
    r = look_at_rotation(c)
    t = -torch.bmm(r.transpose(1, 2), c[:, :, None])[:, :, 0]
    return r, t


def world_to_view(points: torch.Tensor, R: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """``points [...,N,3] @ R [...,3,3] + T [...,3]`` -> view-space points ``[...,N,3]``."""
    return torch.matmul(points, R) + T.unsqueeze(-2)


def rotate_zup_to_yup(points: torch.Tensor) -> torch.Tensor:
    """Rotate z-up data (ModelNet) into the y-up world: ``points @ Rx(pi/2) @ Ry(-pi/2)`` as the original.

    points: ``[...,3]``. The original applied ``points @ axis_angle_to_matrix([pi/2,0,0]) @
    axis_angle_to_matrix([0,-pi/2,0])`` (row vectors), i.e. (x, y, z) -> (-y, z, -x): the old up
    axis z becomes y. Written with exact 0/1 matrices so no float noise enters.
    """
    rx = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]], dtype=points.dtype, device=points.device)
    ry = torch.tensor([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=points.dtype, device=points.device)
    return points @ rx @ ry
