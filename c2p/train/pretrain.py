"""CLIP2Point pre-training: ``run(cfg)`` is the entry point of ONE rank.

    python -m c2p.train.pretrain --config configs/pretrain/tiny.yaml run.name=x train.steps=20

The loop owns no decisions (torchtitan-style): the engine, the schedule, the data stream,
the checkpoint manager and the metrics logger are built by their modules; the loop renders
two augmented depth views per object on the training device, steps the engine, logs, and
hands every step to the checkpoint manager, which decides whether to save.
Environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (world 1 when absent).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from c2p.config.core import ConfigError, build_config, config_hash, load_config, to_dict, to_yaml
from c2p.config.pretrain import PretrainConfig

log = logging.getLogger("c2p.train")

__all__ = ["run", "build_clip2point", "model_signature", "export_run", "main"]


def build_clip2point(cfg: PretrainConfig, *, pretrained: bool = True):
    """(frozen CLIP image tower, trainable CLIP2PointModel) of ``cfg.model``/``cfg.loss``.

    The depth tower starts as a copy of the CLIP image tower (the paper's init); the text
    tower is dropped (only evaluation needs it).
    """
    from c2p.models.clip import create_clip
    from c2p.models.clip2point import CLIP2PointModel

    clip = create_clip(cfg.model.name, pretrained=cfg.model.pretrained if pretrained else "")
    image_tower = clip.visual.eval().requires_grad_(False)
    model = CLIP2PointModel(clip.visual, temperature=cfg.loss.temperature, intra=cfg.loss.intra,
                            global_negatives=cfg.loss.global_negatives, grad_checkpointing=cfg.model.grad_checkpointing)
    return image_tower, model.train()


def model_signature(cfg: PretrainConfig, image_tower: torch.nn.Module) -> dict:
    """What a checkpoint must match to be loaded into this run's model."""
    from c2p.models.clip import embed_dim, image_size

    return {"model": cfg.model.name, "embed_dim": embed_dim(image_tower), "image_size": image_size(image_tower)}


def depth_features(module: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Depth-tower features [B,D] of images [B,3,H,W] through the (engine's) CLIP2Point module."""
    for name in ("encode_depth", "depth_encoder", "depth", "depth_tower"):
        fn = getattr(module, name, None)
        if callable(fn):
            return fn(images)
    raise AttributeError(f"{type(module).__name__} has none of encode_depth/depth_encoder/depth/depth_tower")


def _setup_logging(run_dir: Path, rank: int) -> None:
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s", "%H:%M:%S")
    log.handlers.clear()
    log.setLevel(logging.INFO)
    log.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)  # one progress line, from rank 0
    fileh = logging.FileHandler(run_dir / "logs" / f"train_rank{rank}.log")
    for h in (console, fileh):
        h.setFormatter(fmt)
        log.addHandler(h)


def _seed_step(seed: int, rank: int, step: int, device: torch.device) -> torch.Generator:
    """Augmentation randomness as a pure function of (seed, rank, step): a resume replays it exactly.

    Seeds the global RNG too (dropout-like layers) and returns the generator for the depth jitter.
    """
    value = (seed * 1_000_003 + rank * 7_919 + step * 104_729) % (2**63 - 1)
    torch.manual_seed(value)
    return torch.Generator(device=device).manual_seed(value)


def _micro_step(engine, image_tower, batch: dict, cfg: PretrainConfig, gen: torch.Generator,
                device: torch.device, dtype: torch.dtype) -> dict:
    """Render two augmented depth views per object on ``device``, get the image features, and
    run forward/backward/step of one micro-batch (DeepSpeed steps the optimizer at the
    accumulation boundary). Returns the module's loss dict."""
    from c2p.render import render_depth_pair

    points, view = batch["points"].to(device, non_blocking=True), batch["view"].to(device)
    depth = render_depth_pair(points, view[:, 0], view[:, 1], view[:, 2], jitter=cfg.depth.dist_jitter,
                              image_size=cfg.depth.image_size, radius=cfg.depth.radius, generator=gen,
                              point_keep=cfg.depth.point_keep, angle_jitter=cfg.depth.angle_jitter)
    if "imgfeat" in batch:  # precomputed at shard time: the frozen image tower is skipped
        feat = batch["imgfeat"].to(device, dtype)
    else:
        with torch.no_grad():
            feat = image_tower(batch["image"].to(device, dtype))
    out = engine(depth.to(dtype), feat)
    engine.backward(out["loss"])
    engine.step()
    return out


class _StepClock:
    """Throughput and the fraction of wall time spent waiting for the data stream, per log interval."""

    def __init__(self, step: int):
        self.t, self.wait, self.step = time.perf_counter(), 0.0, step

    @contextlib.contextmanager
    def waiting(self):
        t0 = time.perf_counter()
        yield
        self.wait += time.perf_counter() - t0

    def lap(self, step: int, batch_size: int) -> dict:
        now = time.perf_counter()
        out = {"samples_per_s": (step - self.step) * batch_size / (now - self.t), "data_wait_frac": self.wait / (now - self.t)}
        self.t, self.wait, self.step = now, 0.0, step
        return out


_LOSS_KEYS = ("loss", "loss_cross", "loss_intra", "w", "retrieval_top1")
_COUNT_KEYS = ("skipped_samples", "corrupt_shards")


def _step_metrics(out: dict, stream, device: torch.device, world: int) -> dict:
    """Loss terms and retrieval averaged over ranks, data counters summed. A collective."""
    import torch.distributed as dist

    stats = stream.stats()
    t = torch.tensor([float(out[k].detach()) for k in _LOSS_KEYS] + [float(stats.get(k, 0)) for k in _COUNT_KEYS],
                     dtype=torch.float64, device=device)
    if dist.is_initialized() and world > 1:
        dist.all_reduce(t)
    vals = t.tolist()
    return {**{k: v / world for k, v in zip(_LOSS_KEYS, vals)}, **{k: int(v) for k, v in zip(_COUNT_KEYS, vals[len(_LOSS_KEYS):])}}


def run(cfg: PretrainConfig) -> dict:
    """Train one rank of a pre-training run; returns ``dict(step, run_dir, checkpoint, export, resumed_from, last)``."""
    import torch.distributed as dist
    from c2p.data import PretrainStream, epoch_samples
    from c2p.train.checkpoint import CheckpointManager
    from c2p.train.engine import build_engine, init_distributed, micro_batch_size, resolve_precision, set_lr
    from c2p.train.metrics import MetricsLogger, truncate_metrics
    from c2p.train.schedule import lr_at, steps_per_epoch

    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    dist_info = init_distributed(cfg)
    rank, world, device = dist_info.rank, dist_info.world_size, dist_info.device
    micro = micro_batch_size(cfg, world)  # refuses a batch that does not split, before anything is written
    precision = resolve_precision(cfg, device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.manual_seed(cfg.run.seed)  # same init on every rank (DeepSpeed also broadcasts rank 0's)
    image_tower, model = build_clip2point(cfg)
    signature = model_signature(cfg, image_tower)
    if cfg.depth.image_size != signature["image_size"]:
        raise ConfigError("depth.image_size", cfg.depth.image_size, f"the image size of {cfg.model.name} ({signature['image_size']})")
    epoch = cfg.train.epoch_samples or epoch_samples(cfg.data.shards)
    restart_steps = max(1, round(cfg.schedule.restart_epochs * steps_per_epoch(epoch, cfg.train.batch_size)))

    run_dir = Path(cfg.run.dir) / cfg.run.name
    _setup_logging(run_dir, rank)
    config = to_dict(cfg)
    ckpt = CheckpointManager(run_dir / "checkpoints", rank=rank, world_size=world, zero_stage=cfg.train.zero_stage,
                             every=cfg.checkpoint.every, keep=cfg.checkpoint.keep, signature=signature, config=config,
                             config_hash=config_hash(cfg))
    target = ckpt.resolve(cfg.checkpoint.resume)
    if rank == 0:
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    ckpt.prepare(target)
    engine = build_engine(model, cfg, world_size=world, precision=precision,
                          load_universal=bool(target and target.universal))
    image_tower.to(device=device, dtype=dtype)
    state, rank_state = {"step": 0, "samples": 0}, {}
    if target is None:
        log.info("fresh start: no committed checkpoint in %s (resume=%s)", ckpt.root, cfg.checkpoint.resume)
    else:
        loaded, rank_state = ckpt.load(engine, target)
        state.update(loaded)
        if rank == 0:
            truncate_metrics(run_dir / "metrics.jsonl", state["step"])
    state["data_seed"] = cfg.run.seed
    # The stream is rebuilt from (seed, rank, segment) every checkpoint interval, so a resume at a
    # checkpoint step reads exactly the batches the uninterrupted run read (c2p.data.stream).
    stream = PretrainStream(cfg.data, rank=rank, world_size=world, seed=cfg.run.seed, batch_size=micro,
                            start_step=state["step"] * cfg.train.grad_accum,
                            reseed_every=cfg.checkpoint.every * cfg.train.grad_accum)
    if rank_state.get("data"):  # same world size: this rank's counters and stream position
        stream.load_state_dict(rank_state["data"])
    batches = iter(stream)
    metrics = MetricsLogger(run_dir, rank, cfg.train.steps)
    log.info("rank %d/%d on %s (%s), ZeRO-%d, micro-batch %d x %d accum, %s", rank, world, device, precision,
             cfg.train.zero_stage, micro, cfg.train.grad_accum, signature)

    resumed_from = state["step"] if target else None
    schedule = functools.partial(lr_at, name=cfg.schedule.name, base_lr=cfg.optim.lr, eta_min=cfg.schedule.eta_min,
                                 warmup_steps=cfg.schedule.warmup_steps, total_steps=cfg.train.steps,
                                 restart_steps=restart_steps)
    clock, out = _StepClock(state["step"]), {}
    while state["step"] < cfg.train.steps:
        lr = schedule(state["step"])
        set_lr(engine, lr)
        gen = _seed_step(cfg.run.seed, rank, state["step"], device)
        for _ in range(cfg.train.grad_accum):
            with clock.waiting():
                batch = next(batches)
            out = _micro_step(engine, image_tower, batch, cfg, gen, device, dtype)
        state["step"] += 1
        state["samples"] += cfg.train.batch_size
        last = state["step"] == cfg.train.steps
        if state["step"] % cfg.train.log_every == 0 or last:  # a collective: same steps on every rank
            metrics.log(state["step"], _step_metrics(out, stream, device, world) | clock.lap(state["step"], cfg.train.batch_size)
                        | {"lr": lr, "samples": state["samples"]})
        ckpt.save(engine, state["step"], state, last=last, rank_state=lambda: {"data": stream.state_dict()})

    final = ckpt.root / f"step_{state['step']:08d}"
    export = None
    if cfg.checkpoint.export:
        export = _export_with_probe(engine, cfg, final, run_dir / "export", rank, device, dtype)
    metrics.close()
    if dist.is_initialized() and world > 1:
        dist.barrier()
    return {"step": state["step"], "run_dir": str(run_dir), "checkpoint": str(final), "export": export,
            "resumed_from": resumed_from, "last": {k: float(v.detach()) for k, v in out.items()} if out else {}}


def _export_with_probe(engine, cfg: PretrainConfig, tag_dir: Path, out_dir: Path, rank: int, device, dtype) -> str | None:
    """Export the depth tower (rank 0) and the engine's features of a fixed probe (``probe.safetensors``).

    Every rank runs the probe forward: under ZeRO-3 the parameters are gathered collectively.
    """
    from safetensors.torch import save_file
    from c2p.train.checkpoint import export_depth_tower

    size = cfg.depth.image_size
    probe = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    engine.module.eval()
    with torch.no_grad():
        feats = depth_features(engine.module, probe.to(device, dtype)).float().cpu()
    engine.module.train()
    if rank != 0:
        return None
    path = export_depth_tower(tag_dir, out_dir, lambda config: build_clip2point(build_config(PretrainConfig, config),
                                                                                pretrained=False)[1])
    save_file({"images": probe.contiguous(), "features": feats.contiguous()}, str(out_dir / "probe.safetensors"))
    return str(path)


def export_run(run_dir: str | Path, tag: str | None = None, out_dir: str | Path | None = None) -> Path:
    """Export the depth tower of ``tag`` (default: newest committed) of a run folder, no DeepSpeed engine.

    For ``launch/export.py RUN_DIR``. Writes ``<run_dir>/export/`` unless ``out_dir`` is given.
    """
    from c2p.train.checkpoint import committed_tags, export_depth_tower

    run_dir = Path(run_dir)
    tags = {t.tag: t for t in committed_tags(run_dir / "checkpoints")}
    if not tags:
        raise FileNotFoundError(f"{run_dir / 'checkpoints'} holds no committed step_XXXXXXXX tag")
    if tag is not None and tag not in tags:
        raise ValueError(f"tag={tag!r} is not a committed tag of {run_dir}; expected one of {sorted(tags)}")
    chosen = tags[tag] if tag else tags[max(tags)]
    return export_depth_tower(chosen.path, out_dir or run_dir / "export",
                              lambda config: build_clip2point(build_config(PretrainConfig, config), pretrained=False)[1])


def main(argv: list[str] | None = None) -> dict:
    """``python -m c2p.train.pretrain --config FILE [key=value ...]``: one rank (env as in :func:`run`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=False, help="YAML config (configs/pretrain/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=20")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(PretrainConfig, args.config, args.overrides)
    except ConfigError as e:
        parser.exit(2, f"error: {e}\n")
    summary = run(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
