"""The DeepSpeed engine around the trainable CLIP2Point module (depth tower + learnable w).

Everything DeepSpeed-specific about *building* the engine lives here: process-group init
(NCCL on GPU, gloo on CPU), the DeepSpeed config dict (ZeRO stage, bf16/fp32, gradient
accumulation and clipping), the optimizer (timm's LAMB as in the original, or AdamW) and the
learning rate, which is set from :func:`c2p.train.schedule.lr_at` every step instead of
living in a stateful scheduler. The frozen image tower is not part of the engine.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from c2p.config.core import ConfigError
from c2p.config.pretrain import PretrainConfig

log = logging.getLogger("c2p.train")

__all__ = ["DistInfo", "collective_timeout", "init_distributed", "resolve_device", "resolve_precision", "resolve_backend",
           "deepspeed_config",
           "build_optimizer", "build_engine", "set_lr", "micro_batch_size"]


@dataclass
class DistInfo:
    """This process's place in the job (:func:`c2p.cluster.env.read_cluster_env`; world 1 when
    nothing says otherwise), its device and its process-group backend."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str


def resolve_device(local_rank: int) -> torch.device:
    """GPU ``local_rank`` of this node when there are GPUs, else the CPU."""
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def _bf16_supported(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported()


def resolve_precision(cfg: PretrainConfig, device: torch.device, *, bf16_supported: bool | None = None) -> str:
    """``train.precision`` on ``device``. ``auto``: bf16 on a GPU that has bf16 arithmetic (Ampere
    and later), else fp32 (CPU bf16 matmuls are slow and gloo has no bf16 reductions; fp16 with
    loss scaling is not offered). An explicit ``bf16`` on a CUDA device without it is refused.

    bf16_supported: whether ``device`` computes in bf16 (None: ask the CUDA driver; False on CPUs).
    """
    if bf16_supported is None:
        bf16_supported = _bf16_supported(device)
    if cfg.train.precision == "auto":
        return "bf16" if device.type == "cuda" and bf16_supported else "fp32"
    if cfg.train.precision == "bf16" and device.type == "cuda" and not bf16_supported:
        raise ConfigError("train.precision", "bf16", f"fp32 or auto: {device} has no bf16 arithmetic (needs compute capability >= 8.0)")
    return cfg.train.precision


def collective_timeout(cfg: PretrainConfig) -> timedelta:
    """How long one collective of the default process group waits for the slowest rank.

    ``train.collective_timeout_s``, or twice ``train.watchdog_s`` (1800 s with the watchdog
    off): longer than the watchdog on purpose, since the watchdog's exit names the stalled rank
    and the step, and a timed-out collective names neither. It bounds the rendezvous too.
    """
    t = cfg.train
    return timedelta(seconds=t.collective_timeout_s or (2 * t.watchdog_s if t.watchdog_s else 1800.0))


def resolve_backend(cfg: PretrainConfig, device: torch.device) -> str:
    """``train.backend`` on ``device``. ``auto``: NCCL on a CUDA device, gloo elsewhere; NCCL
    without a CUDA device is refused (it reduces GPU tensors only)."""
    if cfg.train.backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if cfg.train.backend == "nccl" and device.type != "cuda":
        raise ConfigError("train.backend", "nccl", f"gloo or auto on {device} (NCCL needs a CUDA device per rank)")
    return cfg.train.backend


def init_distributed(cfg: PretrainConfig) -> DistInfo:
    """Find this process's place in the job and open the process group through DeepSpeed.

    The place comes from :func:`c2p.cluster.env.setup_env_from_cluster` (submitit, torchrun
    variables, ``srun``; a bare process is rank 0 of world 1 on 127.0.0.1 with a free port),
    which also exports it as RANK/WORLD_SIZE/MASTER_* for ``init_process_group``.
    """
    import deepspeed

    from c2p.cluster.env import setup_env_from_cluster

    place = setup_env_from_cluster()
    device = resolve_device(place.local_rank)
    backend = resolve_backend(cfg, device)  # refuses NCCL on a CPU before the process group opens
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif "OMP_NUM_THREADS" not in os.environ:
        # CPU ranks share the node's cores: torch's default (all cores per process) oversubscribes
        # them, and spinning intra-op threads then slow every rank down several-fold.
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // max(1, place.local_world_size)))
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, timeout=collective_timeout(cfg))
    return DistInfo(place.rank, place.world_size, place.local_rank, device, backend)


def micro_batch_size(cfg: PretrainConfig, world_size: int) -> int:
    """Objects per rank per micro-batch: ``train.batch_size / (world_size * train.grad_accum)``."""
    per = world_size * cfg.train.grad_accum
    if cfg.train.batch_size % per:
        raise ConfigError("train.batch_size", cfg.train.batch_size,
                          f"a multiple of world_size*grad_accum = {world_size}*{cfg.train.grad_accum} = {per}")
    return cfg.train.batch_size // per


def deepspeed_config(cfg: PretrainConfig, world_size: int, precision: str, *, load_universal: bool = False) -> dict:
    """The DeepSpeed JSON config of this run: ZeRO stage, precision, batch split, clipping."""
    stage = cfg.train.zero_stage
    zero: dict[str, Any] = {"stage": stage}
    if stage >= 1:
        # Overlap is a GPU stream feature; contiguous gradients avoid fragmentation on big towers.
        zero.update(contiguous_gradients=True, overlap_comm=torch.cuda.is_available(),
                    reduce_bucket_size=int(5e7), allgather_bucket_size=int(5e7))
    if stage == 3:
        zero.update(stage3_param_persistence_threshold=int(1e4), stage3_gather_16bit_weights_on_model_save=False)
    return {
        "train_batch_size": cfg.train.batch_size,
        "train_micro_batch_size_per_gpu": micro_batch_size(cfg, world_size),
        "gradient_accumulation_steps": cfg.train.grad_accum,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": False},
        # timm's LAMB is a plain torch optimizer: ZeRO wraps it (it partitions the fp32 state).
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "checkpoint": {"load_universal": load_universal},
    }


def build_optimizer(model: torch.nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    """LAMB (timm, as the original) or AdamW; no weight decay on 1-d tensors (norms, biases, w).

    LAMB's global gradient clipping is off: DeepSpeed clips (``optim.grad_clip``). Under ZeRO
    1-3 the optimizer sees flat fp32 partitions, so LAMB's trust ratio is taken per partition
    rather than per tensor; ZeRO stage 0 keeps the original per-tensor behaviour.
    """
    o = cfg.optim
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if o.name == "lamb":
        return _lamb_class()(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
                             max_grad_norm=None)
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)


def _lamb_class():
    from timm.optim import Lamb

    class LambWithStateStep(Lamb):
        """timm's LAMB that also records the step count in each parameter's state.

        timm keeps the count in the param group only; DeepSpeed's ZeRO-3 universal-checkpoint
        loader (another world size) reads ``state[p]["step"]``. The update itself is unchanged.
        """

        @torch.no_grad()
        def step(self, closure=None):
            loss = super().step(closure)
            for group in self.param_groups:
                for p in group["params"]:
                    if p in self.state and "step" in group:
                        self.state[p]["step"] = group["step"].clone()
            return loss

    return LambWithStateStep


def build_engine(model: torch.nn.Module, cfg: PretrainConfig, *, world_size: int | None = None,
                 precision: str | None = None, load_universal: bool = False, device: torch.device | None = None):
    """Wrap ``model`` (the trainable CLIP2Point module) in a DeepSpeed engine on ``device``
    (None: this process's device from :func:`c2p.cluster.env.read_cluster_env`).

    ``load_universal``: the engine will load a universal checkpoint (another world size).
    Activation checkpointing (``model.grad_checkpointing``) is switched on in every
    open_clip tower inside ``model`` before wrapping.
    """
    import deepspeed
    import torch.distributed as dist

    world_size = world_size or (dist.get_world_size() if dist.is_initialized() else 1)
    if device is None:
        from c2p.cluster.env import read_cluster_env

        device = resolve_device(read_cluster_env().local_rank)
    precision = precision or resolve_precision(cfg, device)
    if cfg.model.grad_checkpointing:
        for m in model.modules():
            if m is not model and hasattr(m, "set_grad_checkpointing"):
                m.set_grad_checkpointing(True)
    model = model.to(device)
    optimizer = build_optimizer(model, cfg)
    ds_cfg = deepspeed_config(cfg, world_size, precision, load_universal=load_universal)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_cfg)
    return engine


def set_lr(engine, lr: float) -> None:
    """Set the learning rate of every param group (the ZeRO wrapper shares the groups of the inner optimizer)."""
    for group in engine.optimizer.param_groups:
        group["lr"] = lr
