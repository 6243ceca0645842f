"""c2p.geometry: unit-sphere normalisation, area-weighted sampling, FPS, subsampling."""

import pytest
import torch

from c2p.geometry import farthest_point_sample, gather_points, normalize_unit_sphere, sample_surface, subsample


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


def test_farthest_point_sample_known_answer_and_batching():
    line = torch.arange(10, dtype=torch.float32)
    pts = torch.stack([line, torch.zeros(10), torch.zeros(10)], dim=1)  # points 0..9 on the x axis
    idx = farthest_point_sample(pts[None], 3)
    assert idx.dtype == torch.long and idx.shape == (1, 3)
    assert idx[0, :2].tolist() == [0, 9] and idx[0, 2].item() in (4, 5)

    g = torch.Generator().manual_seed(0)
    batch = torch.rand(4, 256, 3, generator=g)
    bidx = farthest_point_sample(batch, 32)
    for i in range(4):
        assert torch.equal(bidx[i], farthest_point_sample(batch[i : i + 1], 32)[0])
        assert len(set(bidx[i].tolist())) == 32
    # FPS spreads points out: its closest pair is farther apart than a random subset's.
    fps = gather_points(batch, bidx)
    rnd = subsample(batch, 32, torch.Generator().manual_seed(1))

    def min_gap(x):
        d = torch.cdist(x, x) + torch.eye(32) * 10
        return d.amin(dim=(1, 2))

    assert (min_gap(fps) > min_gap(rnd)).all()
    with pytest.raises(ValueError, match="k"):
        farthest_point_sample(batch, 257)


def test_subsample_distinct_points_from_the_input_and_seeded():
    pts = torch.arange(2 * 100 * 3, dtype=torch.float32).reshape(2, 100, 3)
    a = subsample(pts, 40, torch.Generator().manual_seed(3))
    b = subsample(pts, 40, torch.Generator().manual_seed(3))
    assert a.shape == (2, 40, 3)
    torch.testing.assert_close(a, b)
    for i in range(2):
        rows = {tuple(r) for r in a[i].tolist()}
        assert len(rows) == 40 and rows <= {tuple(r) for r in pts[i].tolist()}
    assert not torch.equal(a, subsample(pts, 40, torch.Generator().manual_seed(4)))
    with pytest.raises(ValueError, match="k"):
        subsample(pts, 101)
