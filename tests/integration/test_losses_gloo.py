"""Gathered (global) negatives over 2 gloo processes against one process holding the whole batch.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from c2p.cluster.env import free_port
from c2p.losses import CLIP2PointLoss, NTXentLoss


def _gather_worker(rank: int, world: int, port: int, a, b, img, results) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        n = a.shape[0] // world
        sl = slice(rank * n, (rank + 1) * n)
        la, lb = a[sl].clone().requires_grad_(True), b[sl].clone().requires_grad_(True)
        loss = NTXentLoss(0.07, gather=True)(la, lb)
        loss.backward()
        local = NTXentLoss(0.07, gather=False)(a[sl], b[sl])
        crit = CLIP2PointLoss(0.07, intra=True, global_negatives=True)
        out = crit(a[sl], b[sl], img[sl])
        out["loss"].backward()
        results[rank] = (loss.item(), la.grad, lb.grad, local.item(), out["loss"].item(), crit.w.grad.clone())
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gathered_negatives_match_single_process_over_global_batch():
    world, n, d = 2, 4, 6
    g = torch.Generator().manual_seed(3)
    a, b, img = (torch.randn(world * n, d, generator=g) for _ in range(3))
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_gather_worker, args=(world, free_port(), a, b, img, results), nprocs=world, join=True)
        results = dict(results)

    ga, gb = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    full = NTXentLoss(0.07)(ga, gb)
    full.backward()
    # mean of the per-rank losses = loss over the concatenated batch
    assert sum(r[0] for r in results.values()) / world == pytest.approx(full.item(), rel=1e-5)
    # gradients: each rank's slice gets sum over ranks of d L_r = W * d L_global
    for rank, (_, grad_a, grad_b, local, *_rest) in results.items():
        sl = slice(rank * n, (rank + 1) * n)
        torch.testing.assert_close(grad_a, world * ga.grad[sl], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(grad_b, world * gb.grad[sl], rtol=1e-4, atol=1e-6)
        # and global negatives really differ from per-rank negatives
        assert local != pytest.approx(results[rank][0], rel=1e-4)

    crit = CLIP2PointLoss(0.07, intra=True)
    out = crit(a, b, img)
    out["loss"].backward()
    assert sum(r[4] for r in results.values()) / world == pytest.approx(out["loss"].item(), rel=1e-5)
    assert sum(r[5].item() for r in results.values()) / world == pytest.approx(crit.w.grad.item(), rel=1e-4)
