"""Step time and MFU of the DeepSpeed ZeRO-2 engine vs plain PyTorch DDP: same model, batch, optimizer.

    python tests/benchmarks/bench_engine.py [--model c2p-small] [--batch 16] [--rounds 6] [--steps 5]

Spawns 2 CPU ranks (gloo). Each rank builds the CLIP2Point module of ``--model`` twice with the
same seed: once wrapped in ``torch.nn.parallel.DistributedDataParallel`` with the optimizer of
``c2p.train.engine.build_optimizer`` and gradient clipping, once as the engine of
``c2p.train.engine.build_engine`` (ZeRO-2, fp32). Inputs are fixed tensors (no data loading,
no rendering) so only the training step is timed: forward, backward, gradient reduction,
clipping, optimizer step. The two alternate in rounds so machine noise hits both alike; a
barrier precedes each timed step. MFU of each: per-rank samples/s at the median step time x
the model FLOPs per sample (depth tower forward + backward on the 2 depth views, counted by
``c2p.train.throughput.model_flops_per_sample``; no image tower: the features are inputs) over
the rank's peak, a matmul measured by ``measure_peak_flops`` on its core before the timing.
Prints one JSON object: per-step medians (ms), the ratio zero2/ddp (target <= 1.10) and both MFUs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    from c2p.config.core import load_config
    from c2p.config.pretrain import PretrainConfig
    from c2p.train.engine import build_engine, build_optimizer, init_distributed
    from c2p.train.pretrain import build_clip2point
    from c2p.train.throughput import measure_peak_flops, model_flops_per_sample

    world = int(os.environ["WORLD_SIZE"])
    cfg = load_config(PretrainConfig, REPO / "configs" / "pretrain" / "tiny.yaml", [
        f"model.name={args.model}", f"train.batch_size={args.batch * world}", "train.zero_stage=2",
        f"optim.name={args.optim}", "optim.grad_clip=1.0", "train.precision=fp32"])
    init_distributed(cfg)
    rank = dist.get_rank()

    torch.manual_seed(0)
    image_tower, model_ddp = build_clip2point(cfg, pretrained=False)
    torch.manual_seed(0)
    _, model_ds = build_clip2point(cfg, pretrained=False)
    size = image_tower.image_size[0] if isinstance(image_tower.image_size, (tuple, list)) else image_tower.image_size
    g = torch.Generator().manual_seed(rank)
    depth = torch.randn(args.batch, 2, 3, size, size, generator=g)
    feat = torch.randn(args.batch, image_tower.output_dim, generator=g)
    flops = model_flops_per_sample(model_ddp.depth, None, size).total
    dist.barrier()  # both ranks measure their core at the same time, as they train
    peak = torch.tensor([measure_peak_flops(torch.device("cpu"), torch.float32)], dtype=torch.float64)
    dist.all_reduce(peak)
    peak_rank = float(peak) / world

    ddp = torch.nn.parallel.DistributedDataParallel(model_ddp)
    opt = build_optimizer(model_ddp, cfg)
    engine = build_engine(model_ds, cfg, world_size=world, precision="fp32")

    def step_ddp() -> None:
        loss = ddp(depth, feat)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ddp.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def step_ds() -> None:
        loss = engine(depth, feat)["loss"]
        engine.backward(loss)
        engine.step()

    times: dict[str, list[float]] = {"ddp": [], "zero2": []}
    for fn in (step_ddp, step_ds):  # warm-up: allocator, buckets, optimizer state
        for _ in range(args.warmup):
            fn()
    for _ in range(args.rounds):
        for name, fn in (("ddp", step_ddp), ("zero2", step_ds)):
            for _ in range(args.steps):
                dist.barrier()
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    # A step is as slow as its slowest rank: take the max over ranks per step.
    t = torch.tensor([times["ddp"], times["zero2"]], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if rank == 0:
        ddp_ms, ds_ms = statistics.median(t[0].tolist()) * 1e3, statistics.median(t[1].tolist()) * 1e3
        n_params = sum(p.numel() for p in model_ddp.parameters() if p.requires_grad)
        print(json.dumps({
            "benchmark": "engine_step_time", "world_size": world, "device": "cpu", "backend": "gloo",
            "model": args.model, "trainable_params": n_params, "batch_per_rank": args.batch, "optimizer": args.optim,
            "timed_steps_each": args.rounds * args.steps, "ddp_ms_median": round(ddp_ms, 2),
            "zero2_ms_median": round(ds_ms, 2), "ratio_zero2_over_ddp": round(ds_ms / ddp_ms, 3), "target_ratio": 1.10,
            "ddp_ms_p10_p90": [round(float(t[0].quantile(q)) * 1e3, 2) for q in (0.1, 0.9)],
            "zero2_ms_p10_p90": [round(float(t[1].quantile(q)) * 1e3, 2) for q in (0.1, 0.9)],
            "flops_per_sample": flops, "peak_tflops_rank_measured": round(peak_rank / 1e12, 4),
            "ddp_samples_per_s_rank": round(args.batch / ddp_ms * 1e3, 1),
            "zero2_samples_per_s_rank": round(args.batch / ds_ms * 1e3, 1),
            "ddp_mfu": round(args.batch / (ddp_ms / 1e3) * flops / peak_rank, 4),
            "zero2_mfu": round(args.batch / (ds_ms / 1e3) * flops / peak_rank, 4),
        }), flush=True)
    dist.barrier()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="c2p-small")
    parser.add_argument("--batch", type=int, default=16, help="objects per rank per step")
    parser.add_argument("--optim", default="lamb", choices=["lamb", "adamw"])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round and engine")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from c2p.cluster.env import free_port

    port = free_port()
    procs = []
    for rank in range(args.world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(args.world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", *sys.argv[1:]], env=env,
                                      stdout=subprocess.PIPE if rank == 0 else subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    out, err = procs[0].communicate()
    for p in procs[1:]:
        p.wait()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if procs[0].returncode != 0 or not lines:
        sys.stderr.write(err[-4000:])
        sys.exit(1)
    print(lines[-1])


if __name__ == "__main__":
    main()
