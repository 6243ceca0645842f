"""RGB renders of meshes through a headless EGL OpenGL context (moderngl): the image side of each pair.

The original rendered ShapeNet meshes with PyTorch3D (``HardPhongShader``, perspective camera at
twice the depth-camera distance, white background, one random directional light). This renderer
reproduces that setting with OpenGL so it runs on Mesa's llvmpipe on CPU machines and on the NVIDIA
driver on GPU nodes, from one context per process (:mod:`c2p.render.egl`):

- camera: :func:`c2p.camera.look_at_view_transform` at ``2 * dist`` (the depth maps' directions and up
  vectors, +X left), perspective with a 60 degree field of view (PyTorch3D's FoVPerspectiveCameras
  default); the image is laid out like PyTorch3D's (row 0 top, world +x on the right seen from +z);
- Phong shading with PyTorch3D's defaults: ambient 0.5, diffuse 0.3, specular 0.2, shininess 64, one
  directional light given as the direction towards the light in world space; "fixed" is (0, 1, 0) as
  in the original, "random" is ``1 - 2 U(0,1)`` per axis drawn from ``seed`` (one light for all views of
  an object). Unlike PyTorch3D, lighting is two-sided (normals are turned towards the camera):
  ShapeNet meshes often have inconsistent winding, which would otherwise leave faces ambient-only;
- colours per part of a multi-material ``trimesh.Scene`` (ShapeNetCore v2 OBJ+MTL and Objaverse GLB
  load as such scenes), with a grey fallback for lost textures: see :mod:`c2p.render.drawable`. Each
  fallback is recorded in :attr:`MeshRenderer.last_warnings`;
- white background, no anti-aliasing (PyTorch3D's hard rasteriser has none); back faces are culled
  only where that cannot change a pixel (closed, outward-wound parts seen from outside).

Meshes are rendered as given: put them into the unit sphere with the same transform as their points.
Empty, degenerate or non-finite meshes, and objects that no view sees, raise :class:`RenderError`.
"""

from __future__ import annotations

import logging
import math
from typing import Optional, Sequence, Union

import numpy as np

from c2p.camera import camera_position_from_spherical_angles, look_at_view_transform
from c2p.render import RenderError
from c2p.render.drawable import mesh_parts
from c2p.render.egl import create_context

__all__ = ["MeshRenderer", "RenderError", "light_direction"]

log = logging.getLogger(__name__)

Angles = Union[float, Sequence[float], np.ndarray]

#: PyTorch3D's DirectionalLights / Materials defaults (HardPhongShader).
AMBIENT, DIFFUSE, SPECULAR, SHININESS = 0.5, 0.3, 0.2, 64.0
#: PyTorch3D's FoVPerspectiveCameras default vertical field of view, degrees.
FOV_DEG = 60.0

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
    CUDA device, or EGL's default device without CUDA); see :func:`c2p.render.egl.select_egl_device`.
    """

    def __init__(self, image_size: int = 224, device_index: Optional[int] = None):
        if int(image_size) < 1:
            raise ValueError(f"MeshRenderer: image_size={image_size}, expected >= 1")
        self.image_size = int(image_size)
        self.last_warnings: list[str] = []
        self._ctx = create_context(device_index)
        ctx = self._ctx
        self.gl_info = {k: str(v) for k, v in ctx.info.items() if k in ("GL_RENDERER", "GL_VENDOR", "GL_VERSION")}
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
