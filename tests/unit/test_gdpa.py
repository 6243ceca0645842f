"""Gated Dual-Path Adapter: shapes, the gate, single-path ablation, learning on separable features."""

from __future__ import annotations

import pytest
import torch

from c2p.eval.fewshot import AdapterData, predict, train_adapter
from c2p.eval.splits import sample_shots
from c2p.models.gdpa import GatedDualPathAdapter, GlobalViewAggregator

torch.set_num_threads(1)
V, D, C = 6, 16, 4


def _text() -> torch.Tensor:
    return torch.randn(C, D, generator=torch.Generator().manual_seed(1))


def _features(n_per_class: int, seed: int, noise_clip: float, noise_depth: float) -> AdapterData:
    """Per-view features of C classes around class prototypes; each path has its own noise level."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(C, V, D, generator=torch.Generator().manual_seed(7))
    labels = torch.arange(C).repeat_interleave(n_per_class)
    base = protos[labels]
    clip = base + noise_clip * torch.randn(base.shape, generator=g)
    depth = base + noise_depth * torch.randn(base.shape, generator=g)
    return AdapterData(clip, depth, labels)


def test_shapes_and_initial_gate():
    torch.manual_seed(0)
    a = GatedDualPathAdapter(_text(), V)
    assert a.gate == pytest.approx(0.5)
    x = torch.randn(5, V, D)
    out = a(x, x)
    assert out.shape == (5, C)
    # logits are scaled cosines: |logit| <= scale
    assert out.abs().max() <= a.logit_scale + 1e-4
    assert a.text_features.requires_grad is False
    agg = GlobalViewAggregator(V, D)
    assert agg.view_weights.shape == (V,) and agg(x).shape == (5, D)
    with pytest.raises(ValueError, match=r"expected \[B, 6, 16\]"):
        agg(torch.randn(5, V + 1, D))


def test_gate_mixes_the_two_paths_logits():
    torch.manual_seed(0)
    a = GatedDualPathAdapter(_text(), V, gate_init=0.25).eval()
    xc, xd = torch.randn(3, V, D), torch.randn(3, V, D)
    want = a.logit_scale * (0.25 * a.path_logits(a.clip_path, xc) + 0.75 * a.path_logits(a.depth_path, xd))
    assert torch.allclose(a(xc, xd), want, atol=1e-5)


@pytest.mark.parametrize("paths", ["clip", "depth"])
def test_either_path_alone(paths):
    torch.manual_seed(0)
    a = GatedDualPathAdapter(_text(), V, paths=paths)
    assert a.gate_logit is None and a.gate == (1.0 if paths == "clip" else 0.0)
    assert (a.clip_path is None) == (paths == "depth") and (a.depth_path is None) == (paths == "clip")
    x = torch.randn(4, V, D)
    out = a(x, None) if paths == "clip" else a(None, x)
    assert out.shape == (4, C)
    with pytest.raises(ValueError, match=f"needs {paths}_views"):
        a(None, None)
    names = {n.split(".")[0] for n, _ in a.named_parameters()}
    assert names == {f"{paths}_path"}


def test_bad_paths_are_refused():
    with pytest.raises(ValueError, match="paths: got 'rgb'"):
        GatedDualPathAdapter(_text(), V, paths="rgb")


def test_training_learns_and_moves_the_gate_towards_the_cleaner_path():
    """The depth path's features are clean, the CLIP path's are noise-dominated: the adapter
    learns the task and the gate gives the depth path more weight than its initial 0.5."""
    train = _features(8, seed=0, noise_clip=5.0, noise_depth=0.3)
    test = _features(8, seed=1, noise_clip=5.0, noise_depth=0.3)
    torch.manual_seed(0)
    a = GatedDualPathAdapter(_text(), V, dropout=0.5)
    hist = train_adapter(a, train, epochs=30, lr=1e-2, batch_size=16, seed=0)
    assert hist[-1]["loss"] < hist[0]["loss"]
    acc = (predict(a, test).argmax(1) == test.labels).float().mean().item()
    assert acc >= 0.9  # chance: 0.25
    assert a.gate < 0.47  # started at 0.5; ~0.43 after 60 steps


def test_training_is_reproducible_from_the_seed():
    data = _features(4, seed=0, noise_clip=1.0, noise_depth=1.0)

    def run(seed):
        torch.manual_seed(seed)
        a = GatedDualPathAdapter(_text(), V)
        h = train_adapter(a, data, epochs=3, batch_size=5, seed=seed)
        return h, a.state_dict()

    (h1, s1), (h2, s2), (h3, _) = run(0), run(0), run(1)
    assert h1 == h2 and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert h1 != h3


def test_sample_shots():
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 2, 2, 2, 2])
    a = sample_shots(labels, 3, 2, seed=0)
    assert a.tolist() == sample_shots(labels, 3, 2, seed=0).tolist()
    assert torch.bincount(labels[a], minlength=3).tolist() == [2, 2, 2]
    assert any(sample_shots(labels, 3, 2, seed=s).tolist() != a.tolist() for s in range(1, 6))
    with pytest.raises(ValueError, match="class index 0 has 3 training objects; expected at least 4"):
        sample_shots(labels, 3, 4, seed=0)


def test_cosine_schedule_anneals_the_learning_rate():
    data = _features(2, seed=0, noise_clip=1.0, noise_depth=1.0)
    torch.manual_seed(0)
    a = GatedDualPathAdapter(_text(), V)
    h = train_adapter(a, data, epochs=4, lr=1e-2, seed=0, schedule="cosine")
    lrs = [e["lr"] for e in h]
    assert lrs[0] == pytest.approx(1e-2) and lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.2e-2
    assert all(e["lr"] == 1e-2 for e in train_adapter(a, data, epochs=2, lr=1e-2, seed=0))
