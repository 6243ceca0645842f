"""c2p.render depth: against a brute-force reference of PyTorch3D's point rasterisation, and the original's normalisation."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import c2p.render.depth as depth_mod
from c2p.camera import VIEWS_6, VIEWS_10, look_at_view_transform
from c2p.imagenorm import CLIP_MEAN, CLIP_STD
from c2p.render import normalize_depth, render_depth, render_depth_pair


def reference_zbuf(points: torch.Tensor, elev: float, azim: float, dist: float, size: int, radius: float) -> torch.Tensor:
    """PyTorch3D's documented semantics, written out per pixel and per point (float64, one object, one view).

    Points are scaled by 1/dist and moved to view space with the homogeneous world-to-view matrix
    [[R, 0], [T, 1]] (row vectors); orthographic NDC xy = view xy. Pixel (i, j) has its centre at
    NDC (x, y) = (-1 + (2 (S-1-j) + 1)/S, -1 + (2 (S-1-i) + 1)/S). A point with view z >= 0 covers a
    pixel when dx^2 + dy^2 < radius^2; the pixel keeps the smallest such z, else -1.
    """
    r, t = look_at_view_transform(dist, elev, azim)
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3] = r[0].double()
    m[3, :3] = t[0].double()
    hom = torch.cat([points.double() / dist, torch.ones(len(points), 1, dtype=torch.float64)], dim=1)
    view = (hom @ m)[:, :3]
    out = torch.full((size, size), -1.0, dtype=torch.float64)
    for i in range(size):
        yf = -1 + (2 * (size - 1 - i) + 1) / size
        for j in range(size):
            xf = -1 + (2 * (size - 1 - j) + 1) / size
            d2 = (xf - view[:, 0]) ** 2 + (yf - view[:, 1]) ** 2
            hit = (d2 < radius * radius) & (view[:, 2] >= 0)
            if hit.any():
                out[i, j] = view[hit, 2].min()
    return out


def _cloud(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n, 3, generator=g)
    surface = p / p.norm(dim=1, keepdim=True) * torch.tensor([0.9, 0.6, 0.4])  # an ellipsoid shell
    inner = torch.rand(n // 3, 3, generator=g) - 0.5
    return torch.cat([surface, inner])


@pytest.mark.parametrize(
    "size,radius,dist",
    [(24, 0.05, 1.0), (32, 0.02, 1.1), (20, 0.12, 0.5)],  # dist 0.5 puts points behind the camera (culled)
)
def test_matches_bruteforce_reference(size, radius, dist):
    pts = torch.stack([_cloud(240, 0), _cloud(240, 1)])
    vs = torch.cat([VIEWS_10, VIEWS_6[4:]])  # includes the degenerate elev = +-90 cameras
    z = render_depth(pts, vs[:, 0], vs[:, 1], dist, image_size=size, radius=radius)
    assert z.shape == (2, len(vs), size, size) and z.dtype == torch.float32
    agree = total = 0
    for b in range(2):
        for v in range(len(vs)):
            ref = reference_zbuf(pts[b], float(vs[v, 0]), float(vs[v, 1]), dist, size, radius)
            ours = z[b, v].double()
            agree += int(((ref >= 0) == (ours >= 0)).sum())
            total += ref.numel()
            both = (ref >= 0) & (ours >= 0)
            assert both.any()
            assert (ours[both] - ref[both]).abs().max() < 1e-4
    assert agree / total >= 0.99, f"coverage agrees on {agree}/{total} pixels"
    if dist == 0.5:
        assert (z.amin() >= -1) and bool(((z > -1) & (z < 0)).sum() == 0)  # culled, never negative depth


def test_image_orientation_and_background():
    # one point at world +x and +y, seen from the front (elev 0, azim 0): right half, top half of the image
    pts = torch.tensor([[[0.5, 0.5, 0.0]]])
    z = render_depth(pts, [0.0], [0.0], 1.0, image_size=16, radius=0.1)[0, 0]
    rows, cols = torch.nonzero(z >= 0, as_tuple=True)
    assert len(rows) > 0 and bool((cols >= 8).all()) and bool((rows < 8).all())
    assert torch.allclose(z[z >= 0], torch.tensor(1.0))
    assert bool((z[z < 0] == -1).all())


def test_per_object_views_dist_scaling_and_nonfinite():
    pts = _cloud(300, 3)[None].repeat(2, 1, 1)
    pts[1, :10] = float("nan")  # non-finite points cover nothing and crash nothing
    elev = torch.tensor([[0.0, 90.0], [0.0, 90.0]])
    azim = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    z = render_depth(pts, elev, azim, torch.tensor([[1.0, 1.0], [2.0, 2.0]]), image_size=32, radius=0.05)
    # dist 2: object half as large and twice as far along the axis: centre z 2 instead of 1
    cov1, cov2 = (z[0, 0] >= 0).sum(), (z[1, 0] >= 0).sum()
    assert cov2 < cov1
    assert abs(float(z[1, 0][z[1, 0] >= 0].mean()) - 2.0) < 0.2 and abs(float(z[0, 0][z[0, 0] >= 0].mean()) - 1.0) < 0.2
    with pytest.raises(ValueError, match="dist"):
        render_depth(pts, elev, azim, 0.0, image_size=8)
    with pytest.raises(ValueError, match=r"points has shape"):
        render_depth(pts[0], elev, azim, 1.0)
    with pytest.raises(ValueError, match="elev"):
        render_depth(pts, torch.zeros(3, 2), azim, 1.0)


def test_chunked_equals_single_pass(monkeypatch):
    pts = torch.stack([_cloud(200, s) for s in range(3)])
    full = render_depth(pts, VIEWS_6[:, 0], VIEWS_6[:, 1], 1.0, image_size=24, radius=0.05)
    monkeypatch.setattr(depth_mod, "_MAX_CANDIDATES", 1)  # one object per chunk
    chunked = render_depth(pts, VIEWS_6[:, 0], VIEWS_6[:, 1], 1.0, image_size=24, radius=0.05)
    assert torch.equal(full, chunked)


def test_normalize_depth_values():
    z = torch.full((1, 2, 4, 4), -1.0)
    z[0, 0, 0, 0], z[0, 0, 1, 1], z[0, 0, 2, 2] = 0.5, 1.5, 2.0
    z[0, 1, 0, 0] = 1.5  # every covered z beyond 1: the original's zmin is then 1.0 (background written first)
    out = normalize_depth(z)
    assert out.shape == (1, 2, 3, 4, 4)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    raw = out * std + mean  # undo CLIP normalisation
    torch.testing.assert_close(raw[0, :, 1:], raw[0, :, :1].expand(2, 2, 4, 4), atol=1e-6, rtol=0)  # 3 equal channels
    img = raw[0, 0, 0]
    torch.testing.assert_close(img[0, 0], torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(img[1, 1], torch.tensor((1.5 - 0.5) / 2.0 * 200 / 255), atol=1e-6, rtol=0)
    torch.testing.assert_close(img[2, 2], torch.tensor((2.0 - 0.5) / 2.0 * 200 / 255), atol=1e-6, rtol=0)
    torch.testing.assert_close(img[3, 3], torch.tensor(1.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(raw[0, 1, 0, 0, 0], torch.tensor((1.5 - 1.0) / 1.5 * 200 / 255), atol=1e-6, rtol=0)
    empty = normalize_depth(torch.full((1, 1, 3, 3), -1.0)) * std + mean
    torch.testing.assert_close(empty, torch.ones_like(empty))


def _released_norm(zbuf: torch.Tensor) -> torch.Tensor:
    """The released CLIP2Point ``Renderer.norm`` (render/render.py), transcribed: in-place ops on a detached alias."""
    b, v, h, w = zbuf.shape
    img = zbuf.reshape(b * v, h, w).clone()
    detached = img.detach()
    mask = detached > 0
    batch_max = detached.reshape(b * v, -1).max(dim=1, keepdim=True)[0].unsqueeze(-1).repeat(1, h, w)
    detached[~mask] = 1.0
    batch_min = detached.reshape(b * v, -1).min(dim=1, keepdim=True)[0].unsqueeze(-1).repeat(1, h, w)
    img = img.sub_(batch_min).div_(batch_max) * 200.0 / 255.0
    img[~mask] = 1.0
    img = img.unsqueeze(1).repeat(1, 3, 1, 1)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return ((img - mean) / std).view(b, v, 3, h, w)


def test_normalize_depth_matches_released_code():
    pts = torch.stack([_cloud(400, 11), _cloud(400, 12) * 0.3 + 0.5])  # the second one off-centre and small
    dist = torch.tensor([[0.9, 1.0, 1.1], [1.0, 1.1, 0.9]])
    z = render_depth(pts, VIEWS_10[:3, 0], VIEWS_10[:3, 1], dist, image_size=48)
    torch.testing.assert_close(normalize_depth(z), _released_norm(z), atol=2e-6, rtol=0)


def test_render_depth_pair():
    pts = torch.stack([_cloud(300, 7), _cloud(300, 8)])
    elev, azim = torch.tensor([0.0, 225.0]), torch.tensor([90.0, -45.0])
    a = render_depth_pair(pts, elev, azim, 1.0, image_size=32, generator=torch.Generator().manual_seed(0))
    b = render_depth_pair(pts, elev, azim, torch.tensor([1.0, 1.0]), image_size=32, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 2, 3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a[:, 0], a[:, 1])  # two distances, two images
    plain = normalize_depth(render_depth(pts, elev[:, None], azim[:, None], 1.0, image_size=32))
    still = render_depth_pair(pts, elev, azim, 1.0, jitter=0.0, image_size=32)
    assert torch.equal(still[:, 0], plain[:, 0]) and torch.equal(still[:, 1], plain[:, 0])


def test_render_depth_pair_point_subsets_and_angle_jitter():
    pts = torch.stack([_cloud(400, 7), _cloud(400, 8)])
    elev, azim = torch.tensor([0.0, 30.0]), torch.tensor([90.0, -45.0])
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    sub = render_depth_pair(pts, elev, azim, 1.0, jitter=0.0, image_size=32, generator=gen(), point_keep=0.5)
    assert sub.shape == (2, 2, 3, 32, 32) and not torch.equal(sub[:, 0], sub[:, 1])  # two samplings of one cloud
    assert torch.equal(sub, render_depth_pair(pts, elev, azim, 1.0, jitter=0.0, image_size=32, generator=gen(), point_keep=0.5))
    # each image is exactly the render of 200 of the object's points: fewer covered pixels than all 400
    full = normalize_depth(render_depth(pts, elev[:, None], azim[:, None], 1.0, image_size=32))
    covered = lambda x: (x[:, 0] < 1.0).sum()  # noqa: E731 - background normalises to 1
    assert all(covered(sub[i, k]) < covered(full[i]) for i in range(2) for k in range(2))
    turned = render_depth_pair(pts, elev, azim, 1.0, jitter=0.0, image_size=32, generator=gen(), angle_jitter=20.0)
    assert not torch.equal(turned[:, 0], turned[:, 1]) and not torch.equal(turned[:, 0], full[:, 0])
    with pytest.raises(ValueError, match="point_keep"):
        render_depth_pair(pts, elev, azim, point_keep=0.0)


def test_import_does_not_load_moderngl():
    code = "import sys, c2p.render; c2p.render.render_depth; assert 'moderngl' not in sys.modules, 'moderngl imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_clip_preprocessing_needs_no_renderer():
    code = "import sys, c2p.imagenorm; assert not [m for m in sys.modules if m.startswith('c2p.render')], 'renderer imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_normalize_rgb_is_clip_normalisation_with_optional_resize():
    from c2p.imagenorm import normalize_rgb

    rgb = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    x = normalize_rgb(rgb)
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32
    expected = (rgb.permute(0, 3, 1, 2).float() / 255 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expected)
    assert normalize_rgb(rgb, 4).shape == (2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"expected \[B,H,W,3\]"):
        normalize_rgb(rgb[..., 0])
