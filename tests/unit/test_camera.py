"""c2p.camera: PyTorch3D's look-at conventions, the view sets, the z-up -> y-up rotation."""

from __future__ import annotations

import math

import pytest
import torch

from c2p.camera import (
    VIEWS_6,
    VIEWS_10,
    camera_position_from_spherical_angles,
    look_at_view_transform,
    rotate_zup_to_yup,
    views,
    world_to_view,
)


def _rot(rows):
    return torch.tensor(rows, dtype=torch.float32)


# Hand-derived from PyTorch3D's definition (columns of R are the camera's x, y, z axes in world
# coordinates; x = up x z, y = z x x, z = from the camera to the origin). The elev = +-90 rows come
# from its degenerate-case branch, evaluated by hand in float32 (see look_at_rotation's docstring).
KNOWN = [
    # (elev, azim, R)
    (0.0, 0.0, _rot([[-1, 0, 0], [0, 1, 0], [0, 0, -1]])),
    (0.0, 90.0, _rot([[0, 0, -1], [0, 1, 0], [1, 0, 0]])),
    (0.0, 180.0, _rot([[1, 0, 0], [0, 1, 0], [0, 0, 1]])),
    (90.0, 0.0, _rot([[1, 0, 0], [0, 0, -1], [0, 1, 0]])),
    (-90.0, 180.0, _rot([[-1, 0, 0], [0, 0, 1], [0, 1, 0]])),
]


@pytest.mark.parametrize("elev,azim,expected", KNOWN)
def test_known_rotations(elev, azim, expected):
    r, t = look_at_view_transform(1.0, elev, azim)
    assert r.shape == (1, 3, 3) and t.shape == (1, 3) and r.dtype == torch.float32
    torch.testing.assert_close(r[0], expected, atol=1e-6, rtol=0)
    # the origin sits on the optical axis at view z = dist
    torch.testing.assert_close(t[0], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name,expected", [("10", VIEWS_10), ("6", VIEWS_6)])
def test_view_sets_are_valid_cameras(name, expected):
    v = views(name)
    assert v.shape == (len(expected), 2)
    assert torch.equal(v, expected)
    dist = 1.7
    r, t = look_at_view_transform(dist, v[:, 0], v[:, 1])
    eye = torch.eye(3).expand_as(r)
    torch.testing.assert_close(r.transpose(1, 2) @ r, eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(len(v)), atol=1e-5, rtol=0)
    # T = -R^T C: the camera centre maps to the view origin, the world origin to (0, 0, dist)
    c = camera_position_from_spherical_angles(dist, v[:, 0], v[:, 1])
    torch.testing.assert_close(world_to_view(c[:, None, :], r, t)[:, 0], torch.zeros(len(v), 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(t, torch.tensor([0.0, 0.0, dist]).expand(len(v), 3), atol=1e-5, rtol=0)


def test_view_set_values_and_errors():
    assert VIEWS_10.tolist() == [[0, 0], [90, 0], [180, 0], [270, 0], [225, -45], [225, 45], [315, -45], [315, 45], [0, -90], [0, 90]]
    assert VIEWS_6.tolist() == [[0, 0], [0, 90], [0, 180], [0, 270], [90, 0], [-90, 180]]
    views("10")[0, 0] = 5.0  # a copy: the module constant must not change
    assert VIEWS_10[0, 0] == 0
    with pytest.raises(ValueError, match="expected one of"):
        views("12")


def test_broadcasting_and_camera_position():
    r, t = look_at_view_transform(torch.tensor([1.0, 2.0, 3.0]), 30.0, torch.tensor([10.0, 20.0, 30.0]))
    assert r.shape == (3, 3, 3) and t.shape == (3, 3)
    c = camera_position_from_spherical_angles(2.0, 30.0, 45.0)[0]
    e, a = math.radians(30.0), math.radians(45.0)
    torch.testing.assert_close(c, torch.tensor([2 * math.cos(e) * math.sin(a), 2 * math.sin(e), 2 * math.cos(e) * math.cos(a)]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="broadcast"):
        look_at_view_transform(torch.ones(2), torch.zeros(3), 0.0)


def test_image_conventions():
    # Viewed from +z (elev 0, azim 0) with y up, world +x is on the viewer's right: view x < 0 (NDC +X is left).
    r, t = look_at_view_transform(1.0, 0.0, 0.0)
    p = world_to_view(torch.tensor([[[0.5, 0.25, 0.0]]]), r, t)[0, 0]
    assert p[0] < 0 and p[1] > 0 and abs(p[2] - 1.0) < 1e-6


def _axis_angle(axis, angle):
    """Rodrigues' formula: the column-vector rotation matrix of `angle` about unit `axis`."""
    k = torch.tensor(axis, dtype=torch.float64)
    kx = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * kx + (1 - math.cos(angle)) * (kx @ kx)


def test_rotate_zup_to_yup():
    pts = torch.randn(5, 7, 3, dtype=torch.float64)
    expected = pts @ _axis_angle([1, 0, 0], math.pi / 2) @ _axis_angle([0, 1, 0], -math.pi / 2)
    torch.testing.assert_close(rotate_zup_to_yup(pts), expected, atol=1e-12, rtol=0)
    up = rotate_zup_to_yup(torch.tensor([[0.0, 0.0, 1.0]]))
    assert up.tolist() == [[0.0, 1.0, 0.0]]  # ModelNet's up axis becomes the world's y
