"""RGB renders of meshes through a headless EGL OpenGL context (moderngl): the image side of each pair.

The original rendered ShapeNet meshes with PyTorch3D (``HardPhongShader``, perspective camera at
twice the depth-camera distance, white background, one random directional light). This renderer
reproduces that setting with OpenGL so it runs on Mesa's llvmpipe on CPU machines and on the NVIDIA
driver on GPU nodes, from one context per process:

- camera: :func:`c2p.camera.look_at_view_transform` at ``2 * dist`` (the depth maps' directions and up
  vectors, +X left), perspective with a 60 degree field of view (PyTorch3D's FoVPerspectiveCameras
  default); the image is laid out like PyTorch3D's (row 0 top, world +x on the right seen from +z);
- Phong shading with PyTorch3D's defaults: ambient 0.5, diffuse 0.3, specular 0.2, shininess 64, one
  directional light given as the direction towards the light in world space; "fixed" is (0, 1, 0) as
  in the original, "random" is ``1 - 2 U(0,1)`` per axis drawn from ``seed`` (one light for all views of
  an object). Unlike PyTorch3D, lighting is two-sided (normals are turned towards the camera):
  ShapeNet meshes often have inconsistent winding, which would otherwise leave faces ambient-only;
- colours: UV textures (image x material factor for glTF/PBR materials; OBJ/MTL map_Kd as is),
  vertex colours, face colours, material colours, per part of a multi-material ``trimesh.Scene``
  (ShapeNetCore v2 OBJ+MTL and Objaverse GLB load as such scenes);
- **missing texture fallback**: a part whose material names a texture that could not be loaded (or
  that has no UVs) is drawn in its material colour; if that colour is (near) black it is drawn in
  light grey (0.7) instead, so a lost texture never yields a black object. Each fallback is recorded
  in :attr:`MeshRenderer.last_warnings`;
- white background, no anti-aliasing (PyTorch3D's hard rasteriser has none); back faces are culled
  only where that cannot change a pixel (closed, outward-wound parts seen from outside).

Meshes are rendered as given: put them into the unit sphere with the same transform as their points.
Empty, degenerate or non-finite meshes, and objects that no view sees, raise :class:`RenderError`.
This is the only module that imports moderngl.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from c2p.camera import camera_position_from_spherical_angles, look_at_view_transform
from c2p.render import RenderError

__all__ = ["MeshRenderer", "RenderError", "select_egl_device"]

log = logging.getLogger(__name__)

Angles = Union[float, Sequence[float], np.ndarray]

#: PyTorch3D's DirectionalLights / Materials defaults (HardPhongShader).
AMBIENT, DIFFUSE, SPECULAR, SHININESS = 0.5, 0.3, 0.2, 64.0
#: PyTorch3D's FoVPerspectiveCameras default vertical field of view, degrees.
FOV_DEG = 60.0
#: Colour used where a part's texture is missing and its material colour is (near) black.
FALLBACK_GREY = 0.7

_VERTEX_SHADER = """
#version 330
uniform mat4 mvp;
in vec3 in_pos;
in vec3 in_normal;
in vec2 in_uv;
in vec4 in_color;
out vec3 v_pos;
out vec3 v_normal;
out vec2 v_uv;
out vec4 v_color;
void main() {
    v_pos = in_pos;
    v_normal = in_normal;
    v_uv = in_uv;
    v_color = in_color;
    gl_Position = mvp * vec4(in_pos, 1.0);
}
"""

_FRAGMENT_SHADER = """
#version 330
uniform vec3 cam_pos;
uniform vec3 light_dir;
uniform bool use_tex;
uniform sampler2D tex;
uniform vec4 tint;
uniform float ambient;
uniform float diffuse;
uniform float specular;
uniform float shininess;
in vec3 v_pos;
in vec3 v_normal;
in vec2 v_uv;
in vec4 v_color;
out vec4 f_color;
void main() {
    vec3 base = v_color.rgb;
    if (use_tex) {
        base = texture(tex, v_uv).rgb * tint.rgb;
    }
    vec3 n = v_normal;
    if (dot(n, n) < 1e-12) {  // degenerate vertex normal: use the face's
        n = cross(dFdx(v_pos), dFdy(v_pos));
    }
    n = normalize(n);
    vec3 view = normalize(cam_pos - v_pos);
    if (dot(n, view) < 0.0) {  // two-sided lighting (inconsistent winding is common in ShapeNet)
        n = -n;
    }
    vec3 l = normalize(light_dir);
    float c = dot(n, l);
    vec3 r = -l + 2.0 * c * n;
    float s = c > 0.0 ? pow(max(dot(view, r), 0.0), shininess) : 0.0;
    vec3 col = (ambient + diffuse * max(c, 0.0)) * base + specular * s;
    f_color = vec4(clamp(col, 0.0, 1.0), 1.0);
}
"""


@dataclass
class _Part:
    """One drawable piece of a mesh, in world space."""

    name: str
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


# ---------------------------------------------------------------- EGL device choice


def _load_torch_compiler_first() -> None:
    """Import ``torch._dynamo`` (and the LLVM its compiler stack brings) before Mesa's is loaded.

    In the other order a process segfaults as soon as it imports torch._dynamo after rendering
    (torchvision and open_clip import it: a render test followed by open_clip_train in one pytest
    process, or a notebook that renders and then evaluates); loaded first, both coexist.
    About 1 s, once per process, and nothing when torchvision was already imported.
    """
    try:
        import torch._dynamo  # noqa: F401
    except ImportError:  # no torch compiler stack here: nothing to collide with
        pass




def _egl_devices_cuda_ordinals() -> list[Optional[int]]:
    """For each EGL device (eglQueryDevicesEXT order, glcontext's device_index), its CUDA ordinal or None."""
    name = ctypes.util.find_library("EGL") or "libEGL.so.1"
    lib = ctypes.CDLL(name)
    lib.eglGetProcAddress.restype = ctypes.c_void_p
    lib.eglGetProcAddress.argtypes = [ctypes.c_char_p]
    p_query = lib.eglGetProcAddress(b"eglQueryDevicesEXT")
    p_attr = lib.eglGetProcAddress(b"eglQueryDeviceAttribEXT")
    if not p_query:
        return []
    query = ctypes.CFUNCTYPE(ctypes.c_uint, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int))(p_query)
    count = ctypes.c_int(0)
    if not query(0, None, ctypes.byref(count)) or count.value <= 0:
        return []
    devices = (ctypes.c_void_p * count.value)()
    query(count.value, devices, ctypes.byref(count))
    out: list[Optional[int]] = [None] * count.value
    if p_attr:
        attr = ctypes.CFUNCTYPE(ctypes.c_uint, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_ssize_t))(p_attr)
        egl_cuda_device_nv = 0x323A  # EGL_NV_device_cuda
        for i in range(count.value):
            value = ctypes.c_ssize_t(-1)
            if attr(devices[i], egl_cuda_device_nv, ctypes.byref(value)):
                out[i] = int(value.value)
    return out


def select_egl_device(device_index: Optional[int] = None) -> Optional[int]:
    """The EGL device index (glcontext's ``device_index``) for CUDA device ``device_index`` of this process.

    device_index: CUDA ordinal as this process sees it (i.e. after CUDA_VISIBLE_DEVICES); None: the
    current CUDA device when CUDA is available, otherwise None (EGL's default device: llvmpipe on
    CPU machines). EGL lists every GPU whatever CUDA_VISIBLE_DEVICES says, so the ordinal is matched
    through the NVIDIA EGL_CUDA_DEVICE_NV attribute; where no device reports it, the physical index
    from CUDA_VISIBLE_DEVICES is used as the EGL index (the usual order on NVIDIA-only nodes).
    """
    if device_index is None:
        try:
            import torch

            if not torch.cuda.is_available():
                return None
            device_index = torch.cuda.current_device()
        except Exception:  # noqa: BLE001 - no usable CUDA: the default EGL device
            return None
    try:
        ordinals = _egl_devices_cuda_ordinals()
    except OSError:
        ordinals = []
    if device_index in ordinals:
        return ordinals.index(device_index)
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    physical = int(visible[device_index]) if device_index < len(visible) and visible[device_index].isdigit() else device_index
    if ordinals and physical >= len(ordinals):
        raise RenderError(f"MeshRenderer: device_index={device_index} (physical GPU {physical}) has no EGL device; found {len(ordinals)}")
    return physical


# ---------------------------------------------------------------- mesh -> parts


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


def _mesh_part(m, name: str, warnings: list[str]) -> Optional[_Part]:
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
    return _Part(name=name, vertices=packed, indices=indices, texture=texture, tint=tint, radius=radius, closed=closed)


def mesh_parts(mesh) -> tuple[list[_Part], list[str]]:
    """A trimesh.Trimesh or trimesh.Scene -> drawable parts (scene transforms applied) and warnings.

    Raises RenderError for anything that cannot be drawn (not a mesh, no triangles, non-finite or
    out-of-range data, zero area).
    """
    import trimesh

    warnings: list[str] = []
    items = []
    if isinstance(mesh, trimesh.Scene):
        for node in mesh.graph.nodes_geometry:
            transform, geom_name = mesh.graph[node]
            geom = mesh.geometry.get(geom_name)
            if not isinstance(geom, trimesh.Trimesh):
                warnings.append(f"node {node!r}: {type(geom).__name__} is not a triangle mesh: skipped")
                continue
            g = geom.copy()
            if not np.isfinite(transform).all():
                raise RenderError(f"mesh scene node {node!r}: non-finite transform")
            g.apply_transform(transform)
            items.append((str(node), g))
    elif isinstance(mesh, trimesh.Trimesh):
        items.append(("mesh", mesh))
    else:
        raise RenderError(f"mesh: got {type(mesh).__name__}, expected trimesh.Trimesh or trimesh.Scene")
    parts = [p for p in (_mesh_part(g, n, warnings) for n, g in items) if p is not None]
    if not parts:
        raise RenderError(f"mesh is empty: {len(items)} triangle-mesh parts, none with faces")
    tri = np.concatenate([p.triangles() for p in parts])
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1).sum()
    extent = tri.reshape(-1, 3).max(0) - tri.reshape(-1, 3).min(0)
    if not area > 1e-12 or np.sort(extent)[-2] <= 1e-9:
        raise RenderError(f"mesh is degenerate: total face area {area:.3g}, bounding box extent {extent.round(6).tolist()}")
    return parts, warnings


# ---------------------------------------------------------------- renderer


def _perspective(fov_deg: float, near: float, far: float) -> np.ndarray:
    """OpenGL projection (column vectors, eye looks down -z), square image."""
    s = 1.0 / math.tan(math.radians(fov_deg) / 2.0)
    return np.array(
        [[s, 0, 0, 0], [0, s, 0, 0], [0, 0, (far + near) / (near - far), 2 * far * near / (near - far)], [0, 0, -1, 0]],
        dtype=np.float64,
    )


def light_direction(light: Optional[str], seed: int = 0) -> np.ndarray:
    """World-space direction towards the light, [3]: "fixed"/None -> (0,1,0); "random" -> 1 - 2 U(0,1) per axis, from seed."""
    if light is None or light == "fixed":
        return np.array([0.0, 1.0, 0.0])
    if light == "random":
        d = 1.0 - 2.0 * np.random.RandomState(int(seed) % (2**32)).rand(3)
        return d if np.linalg.norm(d) > 1e-6 else np.array([0.0, 1.0, 0.0])
    raise ValueError(f"light={light!r}, expected None, 'fixed' or 'random'")


class MeshRenderer:
    """Renders meshes to white-background RGB images (and view-space depth) from the original's views.

    One EGL context per renderer (create one per process and reuse it across objects). Each
    :meth:`render` uploads the object once and draws all its views from those buffers.

    image_size: S, square images. device_index: CUDA ordinal whose GPU renders (None: the current
    CUDA device, or EGL's default device without CUDA); see :func:`select_egl_device`.
    """

    def __init__(self, image_size: int = 224, device_index: Optional[int] = None):
        if int(image_size) < 1:
            raise ValueError(f"MeshRenderer: image_size={image_size}, expected >= 1")
        self.image_size = int(image_size)
        self.last_warnings: list[str] = []
        egl_index = select_egl_device(device_index)
        _load_torch_compiler_first()
        try:
            import moderngl

            kwargs = {"backend": "egl", "require": 330}
            if egl_index is not None:
                kwargs["device_index"] = egl_index
            self._ctx = moderngl.create_standalone_context(**kwargs)
        except Exception as err:  # noqa: BLE001 - re-raised with what to check
            raise RenderError(
                f"MeshRenderer: cannot create a headless EGL OpenGL 3.3 context (EGL device {egl_index}): {err}; "
                "needs libEGL (Mesa on CPU machines, the NVIDIA driver on GPU nodes)"
            ) from err
        ctx = self._ctx
        self.gl_info = {k: str(v) for k, v in ctx.info.items() if k in ("GL_RENDERER", "GL_VENDOR", "GL_VERSION")}
        self.egl_device = egl_index
        self._prog = ctx.program(vertex_shader=_VERTEX_SHADER, fragment_shader=_FRAGMENT_SHADER)
        s = self.image_size
        # Views are drawn as tiles of one framebuffer and read back together: one GPU/llvmpipe
        # synchronisation per object instead of one per view.
        self._cols = max(1, min(4, 4096 // s))
        self._rows = self._cols
        size = (self._cols * s, self._rows * s)
        self._fbo = ctx.framebuffer(color_attachments=[ctx.renderbuffer(size, components=4)], depth_attachment=ctx.depth_renderbuffer(size))
        for name, value in (("ambient", AMBIENT), ("diffuse", DIFFUSE), ("specular", SPECULAR), ("shininess", SHININESS)):
            self._prog[name].value = value
        self._prog["tex"].value = 0

    def close(self) -> None:
        """Release the GL context (the renderer is unusable afterwards)."""
        if getattr(self, "_ctx", None) is not None:
            self._ctx.__enter__()
            self._fbo.release()
            self._prog.release()
            self._ctx.release()
            self._ctx = None

    def __enter__(self) -> "MeshRenderer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def render(
        self,
        mesh,
        elev: Angles,
        azim: Angles,
        dist: Angles = 1.0,
        light: Optional[str] = None,
        seed: int = 0,
        return_depth: bool = False,
    ):
        """Render all views of one mesh.

        mesh: trimesh.Trimesh or trimesh.Scene in world space (y-up, normally in the unit sphere).
        elev, azim: ``[V]`` degrees (or scalars); dist: scalar or ``[V]``: the depth camera's
        distance; the perspective RGB camera sits at ``2 * dist``. light: None/"fixed" or "random"
        (seeded by ``seed``). Returns uint8 ``[V,S,S,3]``; with return_depth also float32 ``[V,S,S]``
        view-space z (distance along the optical axis from the RGB camera), -1 on background.
        Raises RenderError for meshes that cannot be drawn or that no view sees.
        """
        if self._ctx is None:
            raise RenderError("MeshRenderer: render() after close()")
        e, a, d = np.broadcast_arrays(*(np.atleast_1d(np.asarray(x, dtype=np.float64)) for x in (elev, azim, dist)))
        if e.ndim != 1 or not np.isfinite(np.stack([e, a, d])).all() or (d <= 0).any():
            raise ValueError(f"MeshRenderer.render: elev/azim/dist must be finite [V] with dist > 0, got {e}, {a}, {d}")
        parts, warnings = mesh_parts(mesh)
        self.last_warnings = warnings
        for w in warnings:
            log.warning("MeshRenderer: %s", w)
        direction = light_direction(light, seed)
        ctx, prog, s = self._ctx, self._prog, self.image_size
        cam_dist = 2.0 * d
        r, t = look_at_view_transform(cam_dist.astype(np.float32), e.astype(np.float32), a.astype(np.float32))
        r, t = r.double().numpy(), t.double().numpy()
        centres = camera_position_from_spherical_angles(cam_dist.astype(np.float32), e.astype(np.float32), a.astype(np.float32)).double().numpy()
        radius = max(p.radius for p in parts)
        near = float(max(1e-3, 0.02 * cam_dist.min()))
        far = float(cam_dist.max() + 2.0 * radius + 1.0)
        proj = _perspective(FOV_DEG, near, far)
        flip = np.diag([-1.0, 1.0, -1.0])  # PyTorch3D view (+X left, +Z forward) -> OpenGL eye (+X right, -Z forward)
        resources = []
        # Several renderers (contexts) may live in one process: make ours current for this call.
        self._ctx.__enter__()
        try:
            drawables = []
            for part in parts:
                vbo = ctx.buffer(part.vertices.tobytes())
                ibo = ctx.buffer(part.indices.tobytes()) if part.indices is not None else None
                content = [(vbo, "3f 3f 2f 4f", "in_pos", "in_normal", "in_uv", "in_color")]
                vao = ctx.vertex_array(prog, content, index_buffer=ibo, index_element_size=4)
                resources += [b for b in (vbo, ibo, vao) if b is not None]
                tex = None
                if part.texture is not None:
                    h, w = part.texture.shape[:2]
                    # GL textures start at the bottom row (v = 0); image arrays at the top.
                    tex = ctx.texture((w, h), 4, np.ascontiguousarray(part.texture[::-1]).tobytes())
                    tex.build_mipmaps()
                    tex.repeat_x = tex.repeat_y = True
                    resources.append(tex)
                # Culling is exact only for closed outward-wound parts seen from outside their bounding sphere
                # (the original rasterised without culling; ShapeNet's open or mis-wound meshes need that).
                cull = part.closed and part.radius < cam_dist.min()
                drawables.append((vao, tex, part.tint, cull))
            rgb = np.empty((len(e), s, s, 3), dtype=np.uint8)
            depth = np.empty((len(e), s, s), dtype=np.float32) if return_depth else None
            self._fbo.use()
            ctx.enable(ctx.DEPTH_TEST)
            ctx.disable(ctx.CULL_FACE)
            prog["light_dir"].value = tuple(float(x) for x in direction)
            cols, per_pass = self._cols, self._cols * self._rows
            for first in range(0, len(e), per_pass):
                count = min(per_pass, len(e) - first)
                ctx.scissor = None
                self._fbo.clear(1.0, 1.0, 1.0, 1.0, depth=1.0)
                for k in range(count):
                    v = first + k
                    tile = (k % cols * s, k // cols * s, s, s)  # GL's origin is the bottom-left corner
                    ctx.viewport = tile
                    ctx.scissor = tile
                    view = np.eye(4)
                    view[:3, :3] = flip @ r[v].T  # column-vector form of X @ R + T, then the axis flip
                    view[:3, 3] = flip @ t[v]
                    mvp = proj @ view
                    prog["mvp"].write(mvp.T.astype("f4").tobytes())  # GLSL matrices are column-major
                    prog["cam_pos"].value = tuple(float(x) for x in centres[v])
                    for vao, tex, tint, cull in drawables:
                        if cull:
                            ctx.enable(ctx.CULL_FACE)
                        else:
                            ctx.disable(ctx.CULL_FACE)
                        prog["use_tex"].value = tex is not None
                        prog["tint"].value = tint
                        if tex is not None:
                            tex.use(0)
                        vao.render()
                ctx.scissor = None
                rows = -(-count // cols)
                area = (0, 0, cols * s, rows * s)
                color = np.frombuffer(self._fbo.read(viewport=area, components=3, alignment=1), dtype=np.uint8).reshape(rows * s, cols * s, 3)
                zw_all = None
                if depth is not None:
                    zw_all = np.frombuffer(self._fbo.read(viewport=area, components=1, attachment=-1, dtype="f4", alignment=1), dtype=np.float32)
                    zw_all = zw_all.reshape(rows * s, cols * s)
                for k in range(count):
                    y0, x0 = k // cols * s, k % cols * s
                    rgb[first + k] = color[y0 : y0 + s, x0 : x0 + s][::-1]  # image rows start at the top
                    if zw_all is not None:
                        zw = zw_all[y0 : y0 + s, x0 : x0 + s][::-1]
                        z = 2.0 * far * near / (far + near - (2.0 * zw - 1.0) * (far - near))  # window depth -> view z
                        depth[first + k] = np.where(zw < 1.0, z, -1.0)
        except RenderError:
            raise
        except Exception as err:  # noqa: BLE001 - a GL failure on one object must not end the job
            raise RenderError(f"MeshRenderer: OpenGL failed while rendering: {type(err).__name__}: {err}") from err
        finally:
            for res in reversed(resources):
                res.release()
            self._ctx.__exit__(None, None, None)
        if (rgb == 255).all():
            raise RenderError(
                f"mesh is not visible in any of the {len(e)} views (bounding radius {radius:.3g}, camera distance "
                f"{cam_dist.min():.3g}..{cam_dist.max():.3g}): is it centred and scaled into the unit sphere?"
            )
        return (rgb, depth) if return_depth else rgb
