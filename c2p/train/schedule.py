"""Learning-rate schedules as pure functions of the optimizer step (nanoGPT's ``get_lr(it)``).

Nothing here holds state, so nothing needs checkpointing: a resumed run at step ``k`` gets
exactly the learning rate an uninterrupted run had at step ``k``.
"""

from __future__ import annotations

import math

__all__ = ["lr_at", "steps_per_epoch"]


def steps_per_epoch(epoch_samples: int, global_batch: int) -> int:
    """Optimizer steps per pass over ``epoch_samples`` objects at ``global_batch`` objects/step (>= 1)."""
    if epoch_samples < 1:
        raise ValueError(f"epoch_samples={epoch_samples}; expected >= 1 (set train.epoch_samples or give shards with index.json)")
    return max(1, epoch_samples // global_batch)


def lr_at(
    step: int,
    *,
    name: str,
    base_lr: float,
    eta_min: float = 0.0,
    warmup_steps: int = 0,
    total_steps: int = 1,
    restart_steps: int = 1,
) -> float:
    """Learning rate of optimizer step ``step`` (0-based: the update that produces step+1).

    - ``cosine_restarts``: the original's ``CosineAnnealingWarmRestarts(T_0, eta_min)``,
      evaluated per step instead of per epoch (smooth; same envelope): period ``restart_steps``.
    - ``warmup_cosine``: one cosine from ``base_lr`` to ``eta_min`` over ``total_steps``.
    - ``constant``: ``base_lr``.

    All three start with a linear warmup from 0 over ``warmup_steps`` (0: none).
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    s = step - warmup_steps
    if name == "constant":
        return base_lr
    if name == "cosine_restarts":
        period = max(1, restart_steps)
        phase = (s % period) / period
    elif name == "warmup_cosine":
        phase = min(1.0, s / max(1, total_steps - warmup_steps))
    else:
        raise ValueError(f"schedule.name={name!r}; expected one of 'cosine_restarts', 'warmup_cosine', 'constant'")
    return eta_min + (base_lr - eta_min) * 0.5 * (1.0 + math.cos(math.pi * phase))
