"""CLIP2Point pre-training: ``run(cfg)`` is the entry point of ONE rank.

    python -m c2p.train.pretrain --config configs/pretrain/tiny.yaml run.name=x train.steps=20

Building and looping are apart (torchtitan's ``Trainer.__init__`` and ``train()``):
:func:`setup` builds the process group, the engine (resumed when a checkpoint says so), the
data stream, the checkpoint manager and the metrics logger into a :class:`Trainer`;
:meth:`Trainer.train` is the loop, which owns no decisions: it renders two augmented depth
views per object on the training device, steps the engine, logs, and hands every step to the
checkpoint manager, which decides whether to save. Where this process sits in the job comes
from :mod:`c2p.cluster.env` (submitit, torchrun's variables, ``srun``; a bare process is world 1).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from c2p.config.core import ConfigError, config_hash, load_config, to_dict, to_yaml
from c2p.config.pretrain import PretrainConfig
from c2p.lease import Lease
from c2p.train.checkpoint import CheckpointManager, ResumeTarget, tag_name
from c2p.train.engine import set_lr
from c2p.train.metrics import MetricsLogger
from c2p.train.nonfinite import NonFiniteGuard
from c2p.train.placement import job_hosts
from c2p.train.throughput import Throughput, build_throughput, format_summary, model_flops_per_sample
from c2p.train.watchdog import Watchdog

log = logging.getLogger("c2p.train")

__all__ = ["run", "setup", "Trainer", "TrainState", "build_clip2point", "model_signature", "main"]


def build_clip2point(cfg: PretrainConfig, *, pretrained: bool = True):
    """(frozen CLIP image tower, trainable CLIP2PointModel) of ``cfg.model``/``cfg.loss``.

    The depth tower starts as a copy of the CLIP image tower (the paper's init); the text
    tower is dropped (only evaluation needs it). ``pretrained=False``: random init (an export
    overwrites it with a checkpoint's weights).
    """
    from c2p.models.clip import create_clip
    from c2p.models.clip2point import CLIP2PointModel

    clip = create_clip(cfg.model.name, pretrained=cfg.model.pretrained if pretrained else "")
    image_tower = clip.visual.eval().requires_grad_(False)
    model = CLIP2PointModel(clip.visual, temperature=cfg.loss.temperature, intra=cfg.loss.intra,
                            global_negatives=cfg.loss.global_negatives, grad_checkpointing=cfg.model.grad_checkpointing)
    return image_tower, model.train()


def model_signature(cfg: PretrainConfig, image_tower: torch.nn.Module) -> dict:
    """What a checkpoint must match to be loaded into this run's model: model name,
    ``embed_dim`` (feature size D) and ``image_size`` (input side in pixels)."""
    from c2p.models.clip import embed_dim, image_size

    return {"model": cfg.model.name, "embed_dim": embed_dim(image_tower), "image_size": image_size(image_tower)}


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
                device: torch.device, dtype: torch.dtype, guard: NonFiniteGuard | None = None, step: int = 0) -> dict | None:
    """Render two augmented depth views per object on ``device``, get the image features, and
    run forward/backward/step of one micro-batch (DeepSpeed steps the optimizer at the
    accumulation boundary). Returns the module's loss dict; None when ``guard`` (a collective
    between forward and backward) skips the batch for a non-finite loss of optimizer step ``step``."""
    from c2p.data.stream import batch_to_device
    from c2p.render import render_depth_pair

    batch = batch_to_device(batch, device)  # asynchronous from pinned memory on a GPU
    points, view = batch["points"], batch["view"]
    depth = render_depth_pair(points, view[:, 0], view[:, 1], view[:, 2], jitter=cfg.depth.dist_jitter,
                              image_size=cfg.depth.image_size, radius=cfg.depth.radius, generator=gen,
                              point_keep=cfg.depth.point_keep, angle_jitter=cfg.depth.angle_jitter)
    if "imgfeat" in batch:  # precomputed at shard time: the frozen image tower is skipped
        feat = batch["imgfeat"].to(dtype)
    else:
        with torch.no_grad():
            feat = image_tower(batch["image"].to(dtype))
    out = engine(depth.to(dtype), feat)
    if guard is not None and not guard.loss_ok(out, step):
        return None
    engine.backward(out["loss"])
    engine.step()
    return out


_MEAN_KEYS = ("loss", "loss_cross", "loss_intra", "w", "retrieval_top1", "batch_classes")
_COUNT_KEYS = ("skipped_samples", "corrupt_shards", "read_retries")


def _step_metrics(out: dict, batch: dict, stream, device: torch.device, world: int) -> dict:
    """Loss terms, retrieval and ``batch_classes`` averaged over ranks, data counters summed. A collective.

    ``batch_classes``: distinct labels in a rank's micro-batch, the classes its in-batch
    negatives come from (with the original's per-GPU negatives): shards cut from a class-sorted
    listing show up here as a few classes per batch.
    """
    import torch.distributed as dist

    stats = stream.stats()
    means = [float(out[k].detach()) for k in _MEAN_KEYS[:-1]] + [float(torch.unique(batch["label"]).numel())]
    t = torch.tensor(means + [float(stats.get(k, 0)) for k in _COUNT_KEYS], dtype=torch.float64, device=device)
    if dist.is_initialized() and world > 1:
        dist.all_reduce(t)
    vals = t.tolist()
    return {**{k: v / world for k, v in zip(_MEAN_KEYS, vals)}, **{k: int(v) for k, v in zip(_COUNT_KEYS, vals[len(_MEAN_KEYS):])}}


def _lr_schedule(cfg: PretrainConfig) -> Callable[[int], float]:
    """Learning rate of each step, a pure function of it; the restart period comes from the epoch length."""
    from c2p.data import epoch_samples
    from c2p.train.schedule import lr_at, steps_per_epoch

    epoch = cfg.train.epoch_samples or epoch_samples(cfg.data.shards)
    restart_steps = max(1, round(cfg.schedule.restart_epochs * steps_per_epoch(epoch, cfg.train.batch_size)))
    return functools.partial(lr_at, name=cfg.schedule.name, base_lr=cfg.optim.lr, eta_min=cfg.schedule.eta_min,
                             warmup_steps=cfg.schedule.warmup_steps, total_steps=cfg.train.steps,
                             restart_steps=restart_steps)


@dataclass
class TrainState:
    """What the loop counts and a restart restores, saved as the checkpoints' ``c2p`` client state.

    The engine keeps its own state (weights, optimizer) and so does the data stream (its step
    and seed, per rank): each object saves what it owns.
    """

    step: int = 0
    """optimizer steps done"""
    samples: int = 0
    """objects trained on so far, summed over ranks"""

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "samples": self.samples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.samples = int(state["step"]), int(state.get("samples", 0))


def _resume(ckpt: CheckpointManager, engine, target: ResumeTarget | None, run_dir: Path,
            resume: str) -> tuple[TrainState, dict]:
    """(run state, this rank's own saved state) after loading ``target`` into ``engine``. A collective."""
    from c2p.train.metrics import truncate_metrics

    if target is None:
        log.info("fresh start: no committed checkpoint in %s (resume=%s)", ckpt.root, resume)
        return TrainState(), {}
    loaded, rank_state = ckpt.load(engine, target)
    state = TrainState()
    state.load_state_dict(loaded)
    if ckpt.rank == 0:
        truncate_metrics(run_dir / "metrics.jsonl", state.step)
    return state, rank_state


@dataclass
class Trainer:
    """One rank's pre-training, built by :func:`setup`: everything the loop touches."""

    cfg: PretrainConfig
    rank: int
    world_size: int
    device: torch.device
    dtype: torch.dtype
    engine: Any
    image_tower: torch.nn.Module
    stream: Any
    checkpoints: CheckpointManager
    metrics: MetricsLogger
    schedule: Callable[[int], float]
    state: TrainState
    run_dir: Path
    resumed_from: int | None
    throughput: Throughput
    guard: NonFiniteGuard | None = None
    guards: contextlib.ExitStack = dataclasses.field(default_factory=contextlib.ExitStack)
    """released when the run ends (:meth:`close`): rank 0's lease on the run directory, the progress watchdog"""

    def train(self) -> dict:
        """Train up to ``train.steps``; returns ``dict(step, run_dir, checkpoint, export, resumed_from, last,
        throughput)`` (``last``: the final micro-batch's loss terms, floats; ``throughput``: the run's
        :meth:`~c2p.train.throughput.Throughput.summary`)."""
        cfg, state, clock = self.cfg, self.state, self.throughput
        out, batches = {}, iter(self.stream)
        clock.start(state.step)
        while state.step < cfg.train.steps:
            lr = self.schedule(state.step)
            set_lr(self.engine, lr)
            gen = _seed_step(cfg.run.seed, self.rank, state.step, self.device)
            for _ in range(cfg.train.grad_accum):
                out = None
                while out is None:  # a batch the non-finite guard skips is replaced by the next one
                    with clock.waiting():
                        batch = next(batches)
                    out = _micro_step(self.engine, self.image_tower, batch, cfg, gen, self.device, self.dtype,
                                      self.guard, state.step + 1)
            state.step += 1
            state.samples += cfg.train.batch_size
            last = state.step == cfg.train.steps
            if state.step % cfg.train.log_every == 0 or last:  # a collective: same steps on every rank
                self.metrics.log(state.step, _step_metrics(out, batch, self.stream, self.device, self.world_size)
                                 | clock.lap(state.step) | {"lr": lr, "samples": state.samples})
            with clock.checkpointing():
                self.checkpoints.save(self.engine, state.step, state.state_dict(), last=last,
                                      rank_state=lambda: {"data": self.stream.state_dict()},
                                      before=self.guard and functools.partial(self.guard.check_weights, self.engine, state.step))
            self.watchdog.beat(state.step)
        return self._finish(out)

    @functools.cached_property
    def watchdog(self) -> Watchdog:
        """This rank's progress watchdog, started on first use (c2p.train.watchdog)."""
        from c2p.cluster.slurm import requeue_this_job  # a job that hangs is requeued, within its budget

        requeue = functools.partial(requeue_this_job, self.cfg.train.watchdog_requeues)
        return self.guards.enter_context(Watchdog(self.run_dir, self.rank, self.world_size, self.cfg.train.watchdog_s,
                                                  step=self.state.step, on_stall=requeue))

    def close(self) -> None:
        """Stop the watchdog and release the run directory (rank 0): the run is over, failed or not."""
        self.guards.close()

    def _finish(self, out: dict) -> dict:
        """Log the throughput summary, export the final tag (when ``checkpoint.export``), close the
        metrics, wait for every rank."""
        import torch.distributed as dist

        from c2p.train.export import EXPORT_DIR, export_after_training

        throughput = self.throughput.summary(self.state.step)  # a collective
        log.info(format_summary(throughput))
        final = self.checkpoints.root / tag_name(self.state.step)
        export = None
        if self.cfg.checkpoint.export:  # a collective (the probe forward)
            export = export_after_training(self.engine, self.cfg, final, self.run_dir / EXPORT_DIR, self.rank,
                                           self.device, self.dtype)
        self.checkpoints.finish(self.run_dir / EXPORT_DIR if self.cfg.checkpoint.export else None)  # checkpoint.remote
        self.metrics.close()
        if dist.is_initialized() and self.world_size > 1:
            dist.barrier()
        return {"step": self.state.step, "run_dir": str(self.run_dir), "checkpoint": str(final), "export": export,
                "resumed_from": self.resumed_from, "last": {k: float(v.detach()) for k, v in out.items()} if out else {},
                "throughput": throughput}


def setup(cfg: PretrainConfig) -> Trainer:
    """Build one rank of a pre-training run, resumed from ``checkpoint.resume`` when there is a tag.

    A collective: every rank of the job calls it. Refuses a global batch that does not split
    over the ranks and a depth size other than the model's input size before anything is
    written; then writes ``<run.dir>/<run.name>/config.yaml`` (rank 0) and the rank's log file.
    """
    from c2p.data import PretrainStream
    from c2p.train.engine import build_engine, init_distributed, micro_batch_size, resolve_precision

    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    place = init_distributed(cfg)
    rank, world, device = place.rank, place.world_size, place.device
    micro = micro_batch_size(cfg, world)  # refuses a batch that does not split, before anything is written
    precision = resolve_precision(cfg, device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.manual_seed(cfg.run.seed)  # same init on every rank (DeepSpeed also broadcasts rank 0's)
    image_tower, model = build_clip2point(cfg)
    signature = model_signature(cfg, image_tower)
    if cfg.depth.image_size != signature["image_size"]:
        raise ConfigError("depth.image_size", cfg.depth.image_size, f"the image size of {cfg.model.name} ({signature['image_size']})")
    # counted on CPU copies now: after build_engine, ZeRO-3 leaves only this rank's partition in the module
    flops = model_flops_per_sample(model.depth, None if cfg.data.imgfeat_tag else image_tower, cfg.depth.image_size)
    schedule = _lr_schedule(cfg)

    run_dir = Path(cfg.run.dir) / cfg.run.name
    # One job per run directory: rank 0 holds the lease from before its first write to the end of
    # the job, so a second launch (even after the first launcher was killed) is refused.
    lease = Lease(run_dir, "run directory").acquire() if rank == 0 else None
    _setup_logging(run_dir, rank)
    mirror = None
    if cfg.checkpoint.remote:  # on every rank (its resume and end are collectives); rank 0 moves the bytes
        from c2p.train.remoteckpt import RemoteCheckpoints

        mirror = RemoteCheckpoints(cfg.checkpoint.remote, cfg.checkpoint.keep)
    hosts = job_hosts()
    ckpt = CheckpointManager(run_dir / "checkpoints", rank=rank, world_size=world, zero_stage=cfg.train.zero_stage,
                             every=cfg.checkpoint.every, keep=cfg.checkpoint.keep, signature=signature,
                             config=to_dict(cfg), config_hash=config_hash(cfg), mirror=mirror, hosts=hosts)
    target = ckpt.resolve(cfg.checkpoint.resume)
    if rank == 0:
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    ckpt.prepare(target)
    engine = build_engine(model, cfg, world_size=world, precision=precision, device=device,
                          load_universal=bool(target and target.universal))
    image_tower.to(device=device, dtype=dtype)
    state, rank_state = _resume(ckpt, engine, target, run_dir, cfg.checkpoint.resume)
    # The stream is rebuilt from (seed, rank, segment) every checkpoint interval, so a resume at a
    # checkpoint step reads exactly the batches the uninterrupted run read (c2p.data.stream).
    stream = PretrainStream(cfg.data, rank=rank, world_size=world, seed=cfg.run.seed, batch_size=micro,
                            start_step=state.step * cfg.train.grad_accum,
                            reseed_every=cfg.checkpoint.every * cfg.train.grad_accum, device=device)
    if rank_state.get("data"):  # same world size: this rank's counters and stream position (and seed)
        stream.load_state_dict(rank_state["data"])
    metrics = MetricsLogger(run_dir, rank, cfg.train.steps)
    throughput = build_throughput(flops, device=device, dtype=dtype, world_size=world,
                                  samples_per_step=cfg.train.batch_size, step=state.step, peak_tflops=cfg.train.peak_tflops)
    log.info("rank %d/%d on host %s, %s (%s), ZeRO-%d, micro-batch %d x %d accum, %s", rank, world, socket.gethostname(), device, precision,
             cfg.train.zero_stage, micro, cfg.train.grad_accum, signature)
    guard = NonFiniteGuard(cfg.train.nonfinite, cfg.train.nonfinite_max_skips, rank, world, device)
    trainer = Trainer(cfg, rank, world, device, dtype, engine, image_tower, stream, ckpt, metrics, schedule,
                      state, run_dir, resumed_from=state.step if target else None, throughput=throughput,
                      guard=guard)
    if lease is not None:
        trainer.guards.callback(lease.release)
    trainer.watchdog  # noqa: B018  started here: a rank stuck before its first step is caught too
    return trainer


def run(cfg: PretrainConfig) -> dict:
    """Train one rank of a pre-training run (the job target ``c2p.train.pretrain:run``); returns
    ``dict(step, run_dir, checkpoint, export, resumed_from, last)`` as :meth:`Trainer.train`."""
    trainer = setup(cfg)
    try:
        return trainer.train()
    finally:
        trainer.close()


def main(argv: list[str] | None = None) -> dict:
    """``python -m c2p.train.pretrain --config FILE [key=value ...]``: one rank; rank 0 prints the summary as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=False, help="YAML config (configs/pretrain/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=20")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(PretrainConfig, args.config, args.overrides)
    except ConfigError as e:
        parser.exit(2, f"error: {e}\n")
    trainer = setup(cfg)
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    if trainer.rank == 0:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
