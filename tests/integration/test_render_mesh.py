"""c2p.render.MeshRenderer on real EGL (llvmpipe here): formats, colours, fallbacks, errors, and agreement with depth maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from c2p.camera import VIEWS_10
from c2p.render import MeshRenderer, RenderError, render_depth, write_contact_sheet

S = 64


@pytest.fixture(scope="module")
def renderer():
    with MeshRenderer(image_size=S) as r:
        yield r


def _dominant(img: np.ndarray, mask: np.ndarray) -> str:
    """'r', 'g', 'b' or 'gray' for the mean colour of img[mask]."""
    c = img[mask].reshape(-1, 3).astype(float).mean(0)
    if c.max() - c.min() < 20:
        return "gray"
    return "rgb"[int(np.argmax(c))]


def _write_shapenet_obj(root, texture: bool = True, kd_quad=(0.0, 0.0, 0.0)):
    """A ShapeNetCore v2 style model: models/model_normalized.obj + .mtl, texture in images/.

    Part 'quad' (x in [-0.9,-0.1], facing +z) is textured: top half red, bottom half blue.
    Part 'box' (x in [0.1,0.9]) has material colour green (Kd only).
    """
    models = root / "models"
    images = root / "images"
    models.mkdir(parents=True)
    images.mkdir()
    if texture:
        tex = np.zeros((16, 16, 3), np.uint8)
        tex[:8] = [255, 0, 0]  # image top -> v = 1
        tex[8:] = [0, 0, 255]
        Image.fromarray(tex).save(images / "texture0.jpg", quality=100)
    kd = " ".join(f"{c:.3f}" for c in kd_quad)
    (models / "model_normalized.mtl").write_text(
        f"newmtl quadmat\nKa 0 0 0\nKd {kd}\nmap_Kd ../images/texture0.jpg\n\nnewmtl boxmat\nKa 0 0 0\nKd 0.1 0.9 0.1\n"
    )
    box = trimesh.creation.box(extents=[0.8, 0.8, 0.8])
    box.apply_translation([0.5, 0.0, 0.0])
    lines = ["mtllib model_normalized.mtl", "o quad"]
    lines += ["v -0.9 -0.4 0.3", "v -0.1 -0.4 0.3", "v -0.1 0.4 0.3", "v -0.9 0.4 0.3"]
    lines += ["vt 0 0", "vt 1 0", "vt 1 1", "vt 0 1", "vn 0 0 1"]
    lines += ["usemtl quadmat", "f 1/1/1 2/2/1 3/3/1", "f 1/1/1 3/3/1 4/4/1", "o box"]
    lines += [f"v {x:.4f} {y:.4f} {z:.4f}" for x, y, z in box.vertices]
    lines += ["usemtl boxmat"] + [f"f {a + 5} {b + 5} {c + 5}" for a, b, c in box.faces]
    path = models / "model_normalized.obj"
    path.write_text("\n".join(lines) + "\n")
    return path


def _load(path, force=None):
    """Load as the ShapeNet corpus reader does: trimesh refuses ``../images/..`` unless the resolver allows it."""
    resolver = trimesh.resolvers.FilePathResolver(str(path), allow_anywhere=True)
    return trimesh.load(str(path), force=force, resolver=resolver)


def _check_quad_and_box(img: np.ndarray, quad_colors=("r", "b")):
    white = (img == 255).all(-1)
    h, w = img.shape[:2]
    left, right = np.zeros_like(white), np.zeros_like(white)
    left[:, : w // 2], right[:, w // 2 :] = True, True
    top, bottom = np.zeros_like(white), np.zeros_like(white)
    top[: h // 2], bottom[h // 2 :] = True, True
    assert _dominant(img, ~white & left & top) == quad_colors[0]
    assert _dominant(img, ~white & left & bottom) == quad_colors[1]
    assert _dominant(img, ~white & right) == "g"


@pytest.mark.parametrize("force", [None, "scene", "mesh"])
def test_shapenet_obj_mtl_textures_and_materials(tmp_path, renderer, force):
    path = _write_shapenet_obj(tmp_path)
    mesh = _load(path, force)
    img = renderer.render(mesh, [0.0], [0.0], 1.0)
    assert img.shape == (1, S, S, 3) and img.dtype == np.uint8
    _check_quad_and_box(img[0])
    assert renderer.last_warnings == []


def test_missing_texture_falls_back_to_material_colour(tmp_path, renderer):
    path = _write_shapenet_obj(tmp_path, texture=False, kd_quad=(0.9, 0.1, 0.1))
    img = renderer.render(_load(path, "scene"), [0.0], [0.0], 1.0)
    _check_quad_and_box(img[0], quad_colors=("r", "r"))  # Kd red everywhere on the quad
    assert any("material colour" in w for w in renderer.last_warnings)
    # Kd black (common in ShapeNet next to map_Kd) + lost texture: grey, never a black object
    other = tmp_path / "black"
    path = _write_shapenet_obj(other, texture=False, kd_quad=(0.0, 0.0, 0.0))
    img = renderer.render(_load(path, "scene"), [0.0], [0.0], 1.0)[0]
    quad = ~(img == 255).all(-1)
    quad[:, S // 2 :] = False
    assert _dominant(img, quad) == "gray" and img[quad].mean() > 60
    assert any("grey" in w for w in renderer.last_warnings)


def test_objaverse_glb_pbr_texture_factor_and_vertex_colours(tmp_path, renderer):
    tex = np.zeros((8, 8, 3), np.uint8)
    tex[:4], tex[4:] = [255, 255, 255], [0, 0, 255]  # top white, bottom blue
    quad = trimesh.Trimesh(
        vertices=[[-0.9, -0.4, 0.3], [-0.1, -0.4, 0.3], [-0.1, 0.4, 0.3], [-0.9, 0.4, 0.3]], faces=[[0, 1, 2], [0, 2, 3]], process=False
    )
    # baseColorFactor red multiplies the texture: white -> red, blue -> black-ish
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(tex), baseColorFactor=[255, 0, 0, 255])
    quad.visual = trimesh.visual.TextureVisuals(uv=[[0, 0], [1, 0], [1, 1], [0, 1]], material=material)
    box = trimesh.creation.box(extents=[0.8, 0.8, 0.8])
    box.apply_translation([0.5, 0.0, 0.0])
    box.visual.vertex_colors = np.tile([20, 230, 20, 255], (len(box.vertices), 1))
    scene = trimesh.Scene()
    scene.add_geometry(quad, geom_name="quad")
    scene.add_geometry(box, geom_name="box")
    path = tmp_path / "object.glb"
    scene.export(path)
    img = renderer.render(trimesh.load(path), [0.0], [0.0], 1.0)[0]
    white = (img == 255).all(-1)
    top_left = ~white
    top_left[S // 2 :, :], top_left[:, S // 2 :] = False, False
    assert _dominant(img, top_left) == "r"
    right = ~white
    right[:, : S // 2] = False
    assert _dominant(img, right) == "g"


def test_face_colours_light_and_determinism(renderer):
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.8)
    sphere.visual.face_colors = np.tile([200, 200, 200, 255], (len(sphere.faces), 1))
    fixed = renderer.render(sphere, [0.0], [0.0], 1.0, light="fixed")[0].astype(float)
    obj = ~(fixed == 255).all(-1)
    rows = np.nonzero(obj.any(1))[0]
    mid = (rows.min() + rows.max()) // 2
    assert fixed[: mid - 4][obj[: mid - 4]].mean() > fixed[mid + 4 :][obj[mid + 4 :]].mean() + 10  # lit from above
    a = renderer.render(sphere, VIEWS_10[:, 0], VIEWS_10[:, 1], 1.0, light="random", seed=3)
    b = renderer.render(sphere, VIEWS_10[:, 0], VIEWS_10[:, 1], 1.0, light="random", seed=3)
    c = renderer.render(sphere, VIEWS_10[:, 0], VIEWS_10[:, 1], 1.0, light="random", seed=4)
    assert a.shape == (10, S, S, 3) and np.array_equal(a, b) and not np.array_equal(a, c)
    # depth: view z from the RGB camera at 2 * dist; the sphere's front point (radius 0.8) sits at 2 - 0.8
    _, depth = renderer.render(sphere, [0.0], [0.0], 1.0, return_depth=True)
    assert abs(float(depth[0, S // 2 - 1 : S // 2 + 1, S // 2 - 1 : S // 2 + 1].mean()) - 1.2) < 0.01


def test_culling_and_winding_do_not_change_pixels(renderer, monkeypatch):
    """Closed outward meshes are drawn with back faces culled; that, or inverted winding, changes no pixel."""
    import c2p.render.drawable as drawable

    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.8)
    sphere.visual.vertex_colors = (np.abs(sphere.vertex_normals) * 255).astype(np.uint8)
    parts, _ = drawable.mesh_parts(sphere)
    assert parts[0].closed
    culled = renderer.render(sphere, VIEWS_10[:, 0], VIEWS_10[:, 1], 1.0, light="random", seed=1)
    inverted = sphere.copy()
    inverted.invert()  # inward normals and winding: not culled, lit two-sided
    assert not drawable.mesh_parts(inverted)[0][0].closed
    flipped = renderer.render(inverted, VIEWS_10[:, 0], VIEWS_10[:, 1], 1.0, light="random", seed=1)
    monkeypatch.setattr(drawable, "_closed_outward", lambda v, f: False)
    plain = renderer.render(sphere, VIEWS_10[:, 0], VIEWS_10[:, 1], 1.0, light="random", seed=1)
    assert np.abs(culled.astype(int) - plain).max() <= 1
    assert np.abs(flipped.astype(int) - plain).max() <= 2


def test_two_renderers_in_one_process(renderer):
    """Each renderer makes its own context current: interleaved renderers do not draw into each other."""
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.7)
    first = renderer.render(sphere, VIEWS_10[:3, 0], VIEWS_10[:3, 1], 1.0)
    with MeshRenderer(image_size=32) as other:
        small = other.render(sphere, [0.0], [0.0], 1.0)
        again = renderer.render(sphere, VIEWS_10[:3, 0], VIEWS_10[:3, 1], 1.0)
    assert small.shape == (1, 32, 32, 3) and np.array_equal(first, again)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: trimesh.Trimesh(), "empty"),
        (lambda: trimesh.Scene(), "empty"),
        (lambda: trimesh.Trimesh(vertices=np.zeros((3, 3)), faces=[[0, 1, 2]], process=False), "degenerate"),
        (lambda: trimesh.Trimesh(vertices=[[0, 0, 0], [1, 0, 0], [0, np.nan, 0]], faces=[[0, 1, 2]], process=False), "non-finite"),
        (lambda: trimesh.creation.box().apply_translation([50.0, 0, 0]), "not visible"),
        (lambda: np.zeros((10, 3)), "expected trimesh"),
    ],
)
def test_bad_meshes_raise_render_error(renderer, make, match):
    with pytest.raises(RenderError, match=match):
        renderer.render(make(), [0.0, 90.0], [0.0, 0.0], 1.0)
    # the renderer stays usable after an error
    assert renderer.render(trimesh.creation.box(), [0.0], [0.0], 1.0).shape == (1, S, S, 3)


def test_depth_and_rgb_agree_on_marker_side(renderer):
    """A red marker on the +x(+y) side lands on the same side of the image in depth maps and RGB renders."""
    body = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    body.visual.face_colors = np.tile([180, 180, 180, 255], (len(body.faces), 1))
    marker = trimesh.creation.box(extents=[0.25, 0.25, 0.25])
    marker.apply_translation([0.6, 0.3, 0.2])
    marker.visual.face_colors = np.tile([255, 0, 0, 255], (len(marker.faces), 1))
    mesh = trimesh.util.concatenate([body, marker])
    rgb, mesh_depth = renderer.render(mesh, VIEWS_10[:, 0], VIEWS_10[:, 1], 1.0, light="fixed", return_depth=True)
    assert mesh_depth.shape == (10, S, S) and mesh_depth.dtype == np.float32
    assert np.array_equal(mesh_depth < 0, (rgb == 255).all(-1))  # background agrees
    covered = mesh_depth[mesh_depth > 0]
    assert covered.min() > 2.0 - 1.0 and covered.max() < 2.0 + 1.0  # RGB camera at 2 * dist, object in the unit sphere
    marker_pts = torch.tensor(marker.sample(2000, seed=0), dtype=torch.float32)[None]
    zbuf = render_depth(marker_pts, VIEWS_10[:, 0], VIEWS_10[:, 1], 1.0, image_size=S, radius=0.03)[0].numpy()
    checked = 0
    for v in range(10):
        px = rgb[v].astype(int)
        red = (px[..., 0] > 60) & (px[..., 0] > 3 * px[..., 1]) & (px[..., 0] > 3 * px[..., 2])  # shaded red
        if red.sum() < 5:
            continue  # marker hidden behind the body in this view
        rr, rc = np.nonzero(red)
        dr, dc = np.nonzero(zbuf[v] > 0)
        for got, want in ((rc.mean(), dc.mean()), (rr.mean(), dr.mean())):
            if abs(want - (S - 1) / 2) > 4:  # the marker is clearly off-centre along this axis
                assert (got > (S - 1) / 2) == (want > (S - 1) / 2), f"view {VIEWS_10[v].tolist()}"
        checked += 1
    assert checked >= 7


def test_egl_device_selection(monkeypatch):
    """EGL lists every GPU; the CUDA ordinal of this process is matched via EGL_CUDA_DEVICE_NV, else CUDA_VISIBLE_DEVICES."""
    import c2p.render.egl as egl

    monkeypatch.setattr(egl, "_egl_devices_cuda_ordinals", lambda: [None, 1, 0])  # a software device, then 2 GPUs
    assert egl.select_egl_device(0) == 2 and egl.select_egl_device(1) == 1
    monkeypatch.setattr(egl, "_egl_devices_cuda_ordinals", lambda: [])  # no EGL_NV_device_cuda
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert egl.select_egl_device(1) == 3
    monkeypatch.setattr(egl, "_egl_devices_cuda_ordinals", lambda: [None, None])
    with pytest.raises(RenderError, match="no EGL device"):
        egl.select_egl_device(1)
    if not torch.cuda.is_available():
        assert egl.select_egl_device(None) is None  # CPU machine: EGL's default device (llvmpipe)


def test_contact_sheet(tmp_path, renderer):
    box = trimesh.creation.box()
    rgb, depth = renderer.render(box, VIEWS_10[:4, 0], VIEWS_10[:4, 1], 1.0, return_depth=True)
    out = write_contact_sheet(tmp_path / "previews" / "sheet.png", [rgb, rgb], [depth, depth], ["box a", "box b"])
    with Image.open(out) as im:
        assert im.size == (4 * S, 2 * (14 + 2 * S))
        arr = np.asarray(im.convert("RGB"))
    assert (arr < 250).any()
    with pytest.raises(ValueError, match="titles"):
        write_contact_sheet(tmp_path / "x.png", [rgb], None, ["a", "b"])


def test_torch_compiler_imports_after_rendering():
    """A fresh process renders, then imports torch._dynamo (as torchvision and open_clip do):
    Mesa's LLVM loaded first used to segfault it (exit -11)."""
    import subprocess
    import sys

    code = ("import numpy as np, trimesh\nfrom c2p.render import MeshRenderer\n"
            "MeshRenderer(image_size=16).render(trimesh.creation.box(), np.zeros(1), np.zeros(1), 1.0)\n"
            "import torch._dynamo\nprint('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])
