"""A trimesh Trimesh or Scene -> drawable parts: per-vertex arrays, texture and colour per part, in world space.

One part per triangle mesh of the scene (its node transform applied), each flattened into one
interleaved vertex array (position, normal, UV, colour) that the mesh renderer uploads as is.
Colours follow PyTorch3D's loaders: UV textures (image x material factor for glTF/PBR
materials; OBJ/MTL map_Kd as is), vertex colours, face colours, material colours.

**Missing texture fallback**: a part whose material names a texture that could not be loaded
(or that has no UVs) gets its material colour; if that colour is (near) black it gets light grey
(:data:`FALLBACK_GREY`) instead, so a lost texture never yields a black object. Each fallback is
returned as a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from c2p.geometry import scene_pieces
from c2p.render import RenderError

__all__ = ["FALLBACK_GREY", "Part", "mesh_parts"]

#: Colour used where a part's texture is missing and its material colour is (near) black.
FALLBACK_GREY = 0.7


@dataclass
class Part:
    """One drawable piece of a mesh, in world space."""

    vertices: np.ndarray  # [V,12] float32: position(3) normal(3) uv(2) colour(4, 0..1)
    indices: Optional[np.ndarray]  # [F*3] uint32 triangle corners into vertices; None: vertices are unindexed corners
    texture: Optional[np.ndarray]  # [H,W,4] uint8 (top row first) or None
    tint: tuple[float, float, float, float]
    radius: float  # largest distance of a drawn vertex from the origin
    closed: bool  # closed, consistently and outwards wound: back faces are never visible from outside

    def triangles(self) -> np.ndarray:
        """[F,3,3] float64 corner positions."""
        pos = self.vertices[:, :3].astype(np.float64)
        return (pos[self.indices] if self.indices is not None else pos).reshape(-1, 3, 3)


def _closed_outward(vertices: np.ndarray, faces: np.ndarray) -> bool:
    """True when every directed edge has exactly one opposite (closed, consistently wound) and the volume is positive.

    Then, seen from outside its bounding sphere, each back-facing triangle lies behind a front-facing
    one of the same surface, so culling back faces changes no pixel and halves the rasteriser's work.
    """
    n = np.int64(len(vertices))
    a, b, c = faces[:, 0], faces[:, 1], faces[:, 2]
    fwd = np.concatenate([a * n + b, b * n + c, c * n + a])
    rev = np.concatenate([b * n + a, c * n + b, a * n + c])
    fwd.sort()
    rev.sort()
    if (fwd[1:] == fwd[:-1]).any() or not np.array_equal(fwd, rev):
        return False
    tri = vertices[faces]
    return float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum()) > 0.0


def _unit_normals(n: np.ndarray) -> np.ndarray:
    n = np.nan_to_num(np.asarray(n, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    return np.where(norm > 1e-12, n / np.maximum(norm, 1e-12), 0.0)


def _texture_array(image) -> Optional[np.ndarray]:
    """PIL image (any mode) -> [H,W,4] uint8, or None when there is no usable image."""
    if image is None:
        return None
    try:
        arr = np.asarray(image.convert("RGBA"), dtype=np.uint8)
    except Exception:  # noqa: BLE001 - an unreadable image is a missing texture (fallback below)
        return None
    return arr if arr.ndim == 3 and arr.shape[0] > 0 and arr.shape[1] > 0 else None


def _material_color_and_image(material) -> tuple[np.ndarray, object, bool]:
    """(RGBA colour 0..1, texture image or None, colour multiplies texture?) of a trimesh material."""
    from trimesh.visual.material import PBRMaterial

    if isinstance(material, PBRMaterial):
        factor = material.baseColorFactor
        color = np.asarray(factor if factor is not None else [255, 255, 255, 255], dtype=np.float64)
        color = color / 255.0 if color.max() > 1.0 or color.dtype.kind in "ui" else color
        return color, material.baseColorTexture, True
    diffuse = getattr(material, "diffuse", None)
    color = np.asarray(diffuse if diffuse is not None else getattr(material, "main_color", [102, 102, 102, 255]), dtype=np.float64)
    color = color / 255.0 if color.max() > 1.0 else color
    # OBJ/MTL: map_Kd is drawn as is (as PyTorch3D's load_obj textures do), Kd only without a texture.
    return color, getattr(material, "image", None), False


def _mesh_part(m, name: str, warnings: list[str]) -> Optional[Part]:
    """trimesh.Trimesh (already in world space) -> a drawable part; None when it has no faces."""
    vertices = np.asarray(m.vertices, dtype=np.float64)
    faces = np.asarray(m.faces, dtype=np.int64)
    if faces.size == 0:
        return None
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.min() < 0 or faces.max() >= len(vertices):
        raise RenderError(f"mesh part {name!r}: faces index outside its {len(vertices)} vertices (or are not triangles)")
    if np.isfinite(vertices).all():
        radius = float(np.sqrt(np.einsum("ij,ij->i", vertices, vertices).max()))
    else:  # only vertices that faces use matter
        bad = int((~np.isfinite(vertices[faces])).any(axis=(1, 2)).sum())
        if bad:
            raise RenderError(f"mesh part {name!r}: {bad} of {len(faces)} faces have non-finite vertex coordinates")
        used = vertices[faces.reshape(-1)]
        radius = float(np.sqrt(np.einsum("ij,ij->i", used, used).max()))
    # Per-vertex attributes drawn with an index buffer (the vertex stage runs once per vertex, not per
    # corner: what dominates on llvmpipe at 224 px); face colours or unusable vertex normals need
    # per-corner attributes instead, drawn unindexed.
    try:
        vn = np.asarray(m.vertex_normals, dtype=np.float64)
        smooth = vn.shape == vertices.shape
    except Exception:  # noqa: BLE001 - face normals below
        smooth = False
    visual = m.visual
    kind = getattr(visual, "kind", None)
    indexed = smooth and kind != "face"
    corners = faces.reshape(-1)
    packed = np.zeros((len(vertices) if indexed else len(corners), 12), dtype=np.float32)
    packed[:, 0:3] = vertices if indexed else vertices[corners]
    if smooth:
        un = _unit_normals(vn)
        packed[:, 3:6] = un if indexed else un[corners]
    else:
        tri = vertices[faces]
        fn = _unit_normals(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]))
        packed[:, 3:6] = np.repeat(fn, 3, axis=0)
    at = (lambda per_vertex: per_vertex) if indexed else (lambda per_vertex: per_vertex[corners])
    colors = packed[:, 8:12]
    texture, tint = None, (1.0, 1.0, 1.0, 1.0)
    if kind == "texture":
        color, image, multiplies = _material_color_and_image(visual.material)
        texture = _texture_array(image)
        vuv = getattr(visual, "uv", None)
        has_uv = vuv is not None and len(vuv) == len(vertices) and np.isfinite(np.asarray(vuv, dtype=np.float64)).all()
        if texture is not None and has_uv:
            packed[:, 6:8] = at(np.asarray(vuv, dtype=np.float32))
            tint = tuple(float(c) for c in (color if multiplies else np.ones(4)))
        elif texture is None and not has_uv:
            pass  # a plain material (e.g. an MTL entry with Kd only): its colour, nothing is missing
        else:
            # UVs without an image: the texture file named by the material was not found or not readable
            # (trimesh keeps the UVs and drops the image); an image without UVs cannot be mapped either.
            why = "its texture image is missing or unreadable" if texture is None else "it has no per-vertex UVs"
            texture = None
            if color[:3].max() < 0.05:
                color = np.array([FALLBACK_GREY, FALLBACK_GREY, FALLBACK_GREY, 1.0])
                warnings.append(f"part {name!r}: {why} and its material colour is black: drawn in grey {FALLBACK_GREY}")
            else:
                warnings.append(f"part {name!r}: {why}: drawn in its material colour {np.round(color[:3], 3).tolist()}")
        colors[:] = color
    elif kind == "face":
        colors[:] = np.repeat(np.asarray(visual.face_colors, dtype=np.float32) / 255.0, 3, axis=0)
    else:  # "vertex", or None: trimesh's default colour comes back as vertex colours
        vc = np.asarray(visual.vertex_colors, dtype=np.float32) / 255.0
        colors[:] = at(vc) if len(vc) == len(vertices) else np.array([0.4, 0.4, 0.4, 1.0])
    indices = faces.astype(np.uint32).reshape(-1) if indexed else None
    closed = _closed_outward(vertices, faces)
    return Part(vertices=packed, indices=indices, texture=texture, tint=tint, radius=radius, closed=closed)


def mesh_parts(mesh) -> tuple[list[Part], list[str]]:
    """A trimesh.Trimesh or trimesh.Scene -> drawable parts (scene transforms applied) and warnings.

    Raises RenderError for anything that cannot be drawn (not a mesh, no triangles, non-finite or
    out-of-range data, zero area).
    """
    import trimesh

    try:
        pieces = scene_pieces(mesh)
    except TypeError as err:
        raise RenderError(f"mesh: {err}") from err
    warnings: list[str] = []
    items = []
    for node, geom, transform in pieces:
        if transform is None:  # a bare Trimesh: already in world space, drawn as given
            items.append((node, geom))
            continue
        if not isinstance(geom, trimesh.Trimesh):
            warnings.append(f"node {node!r}: {type(geom).__name__} is not a triangle mesh: skipped")
            continue
        g = geom.copy()
        if not np.isfinite(transform).all():
            raise RenderError(f"mesh scene node {node!r}: non-finite transform")
        g.apply_transform(transform)  # on a copy: the caller's scene stays as loaded
        items.append((str(node), g))
    parts = [p for p in (_mesh_part(g, n, warnings) for n, g in items) if p is not None]
    if not parts:
        raise RenderError(f"mesh is empty: {len(items)} triangle-mesh parts, none with faces")
    tri = np.concatenate([p.triangles() for p in parts])
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1).sum()
    extent = tri.reshape(-1, 3).max(0) - tri.reshape(-1, 3).min(0)
    if not area > 1e-12 or np.sort(extent)[-2] <= 1e-9:
        raise RenderError(f"mesh is degenerate: total face area {area:.3g}, bounding box extent {extent.round(6).tolist()}")
    return parts, warnings
