"""c2p.geometry: a scene's world-space triangles, unit-sphere normalisation, area-weighted sampling."""

import pytest
import torch

from c2p.geometry import (
    mesh_triangles,
    normalize_unit_sphere,
    sample_surface,
    scene_pieces,
)


def _cube():
    import trimesh

    m = trimesh.creation.box(extents=[1.0, 1.0, 1.0])
    return torch.tensor(m.vertices, dtype=torch.float32), torch.tensor(m.faces, dtype=torch.long)


def test_normalize_unit_sphere_batched_mean_centre_and_radius_one():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(3, 500, 3, generator=g) * torch.tensor([10.0, 2.0, 0.5]) + 7.0
    out = normalize_unit_sphere(pts)
    assert out.shape == pts.shape
    torch.testing.assert_close(out.mean(dim=1), torch.zeros(3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.norm(dim=-1).amax(dim=1), torch.ones(3))
    # Each cloud on its own: normalising one equals its slice of the batch.
    torch.testing.assert_close(normalize_unit_sphere(pts[1]), out[1])


def test_normalize_unit_sphere_degenerate_and_bad_shapes():
    same = torch.full((10, 3), 2.5)
    out = normalize_unit_sphere(same)
    assert torch.isfinite(out).all() and out.abs().max() == 0
    with pytest.raises(ValueError, match=r"\[\.\.\., N, 3\]"):
        normalize_unit_sphere(torch.zeros(10, 2))


def test_sample_surface_points_lie_on_the_surface_and_are_seeded():
    v, f = _cube()
    a = sample_surface(v, f, 2000, generator=torch.Generator().manual_seed(1))
    b = sample_surface(v, f, 2000, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2000, 3) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    # On a face of the unit cube: the largest |coordinate| is 0.5, the others within.
    assert torch.allclose(a.abs().amax(dim=1), torch.full((2000,), 0.5), atol=1e-5)
    # Every face of the cube gets samples (6 faces, ~333 each).
    face_axis = a.abs().argmax(dim=1) * 2 + (a.gather(1, a.abs().argmax(dim=1, keepdim=True)).squeeze(1) > 0).long()
    counts = torch.bincount(face_axis, minlength=6)
    assert counts.min() > 250, counts


def test_sample_surface_is_area_weighted():
    # Two triangles, areas 1/2 and 3/2 (disjoint in x): expect a 1:3 split.
    v = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 0, 0], [8, 0, 0], [5, 1, 0]], dtype=torch.float64)
    f = torch.tensor([[0, 1, 2], [3, 4, 5]])
    p = sample_surface(v, f, 40000, generator=torch.Generator().manual_seed(0))
    frac_big = float((p[:, 0] >= 5).double().mean())
    assert abs(frac_big - 0.75) < 0.01, frac_big
    # Uniform within a triangle: mean of the small one is its centroid (1/3, 1/3).
    small = p[p[:, 0] < 5]
    torch.testing.assert_close(small.mean(0)[:2], torch.tensor([1 / 3, 1 / 3], dtype=torch.float64), atol=0.01, rtol=0)


def test_sample_surface_refuses_bad_meshes():
    v, f = _cube()
    with pytest.raises(ValueError, match="area"):
        sample_surface(torch.zeros(3, 3), torch.tensor([[0, 1, 2]]), 10)
    with pytest.raises(ValueError, match="indices"):
        sample_surface(v, f + 100, 10)
    with pytest.raises(ValueError, match=r"\[F, 3\]"):
        sample_surface(v, torch.zeros(0, 3, dtype=torch.long), 10)
    bad = v.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="area"):
        sample_surface(bad, f, 10)


def test_mesh_triangles_places_scene_pieces_and_keeps_winding():
    import numpy as np
    import trimesh

    tri = trimesh.Trimesh(vertices=[[0, 0, 0], [1, 0, 0], [0, 1, 0]], faces=[[0, 1, 2]], process=False)
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    mirror[:3, 3] = [0.0, 0.0, 2.0]
    scene = trimesh.Scene()
    scene.add_geometry(tri, geom_name="a", node_name="a")
    scene.add_geometry(tri, geom_name="b", node_name="b", transform=mirror)  # mirrored: trimesh would flip faces
    scene.add_geometry(trimesh.load_path(np.array([[0.0, 0, 0], [1, 1, 1]])), geom_name="line", node_name="line")
    scene.add_geometry(trimesh.Trimesh(), geom_name="empty", node_name="empty")
    pieces = scene_pieces(scene)
    assert [node for node, _, _ in pieces] == ["a", "b", "line", "empty"]
    assert pieces[1][1] is scene.geometry["b"] and np.array_equal(pieces[1][2], mirror)  # as loaded, not copied
    verts, faces = mesh_triangles(scene)
    assert verts.dtype == np.float64 and faces.dtype == np.int64
    assert faces.tolist() == [[0, 1, 2], [3, 4, 5]]  # the line and the empty mesh are left out
    assert verts[3:].tolist() == [[0, 0, 2], [-1, 0, 2], [0, 1, 2]]
    assert scene_pieces(tri) == [("mesh", tri, None)]
    v, f = mesh_triangles(tri)
    assert np.array_equal(v, tri.vertices) and np.array_equal(f, tri.faces)
    v, f = mesh_triangles(trimesh.Scene())
    assert v.shape == (0, 3) and f.shape == (0, 3)
    with pytest.raises(TypeError, match="expected trimesh.Trimesh or trimesh.Scene"):
        mesh_triangles(np.zeros((3, 3)))
