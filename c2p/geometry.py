"""Object geometry: a trimesh scene's placed pieces and world-space triangles, area-weighted
surface sampling and unit-sphere normalisation.

The torch functions run on the device of their input and never move data between devices.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["scene_pieces", "mesh_triangles", "normalize_unit_sphere", "sample_surface"]

# Below this radius a cloud is a single point: it is centred but not scaled (no division by ~0).
_EPS = 1e-12


def scene_pieces(mesh: Any) -> list[tuple[Any, Any, np.ndarray | None]]:
    """The pieces of a trimesh Trimesh or Scene and where the scene places them.

    Returns ``[(node, geometry, transform)]``: for a Scene one entry per geometry node, in the
    scene graph's node order, with the node's ``[4,4]`` float64 local-to-world transform and its
    geometry as loaded (not copied; it may be None or not a triangle mesh, e.g. a Path3D: each
    caller decides what to skip and how to say so); for a Trimesh one entry ``("mesh", mesh, None)``
    (already in world space). Raises TypeError for anything else.
    """
    import trimesh

    if isinstance(mesh, trimesh.Trimesh):
        return [("mesh", mesh, None)]
    if not isinstance(mesh, trimesh.Scene):
        raise TypeError(f"got {type(mesh).__name__}, expected trimesh.Trimesh or trimesh.Scene")
    pieces = []
    for node in mesh.graph.nodes_geometry:
        transform, name = mesh.graph[node]
        pieces.append((node, mesh.geometry.get(name), transform))
    return pieces


def mesh_triangles(mesh: Any) -> tuple[np.ndarray, np.ndarray]:
    """World-space triangles of a trimesh Trimesh or Scene: ``(vertices [V,3] float64, faces [F,3] int64)``.

    A Scene's triangle meshes are placed with their node transforms and concatenated (pieces
    without faces, and geometries that are not triangle meshes, are left out; faces keep their
    winding even under a mirroring transform); visuals are not touched (nothing is merged, so
    textures stay as loaded for the renderer). An empty scene gives ``[0,3]`` arrays.
    Raises TypeError for anything that is not a Trimesh or Scene.
    """
    import trimesh

    if isinstance(mesh, trimesh.Trimesh):
        return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)
    verts, faces, offset = [], [], 0
    for _, geom, transform in scene_pieces(mesh):
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            continue
        verts.append(trimesh.transform_points(np.asarray(geom.vertices, dtype=np.float64), transform))
        faces.append(np.asarray(geom.faces, dtype=np.int64) + offset)
        offset += len(geom.vertices)
    if not verts:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    return np.concatenate(verts), np.concatenate(faces)


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
