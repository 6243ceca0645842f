"""Few-shot and fully supervised training of the Gated Dual-Path Adapter, and K × seed sweeps.

The two frozen towers (CLIP's image tower and the exported CLIP2Point depth tower,
:mod:`c2p.eval.towers`) encode the V depth views of every train and test object once
(:class:`~c2p.eval.features.ViewFeatureCache`); training then only runs the adapter over those
cached features, on K objects per class drawn by :func:`~c2p.eval.splits.sample_shots`:

    results = run_fewshot(cfg, shots=16, seed=0)   # K=16 per class, reproducible from the seed
    results = run_fewshot(cfg, shots=0, seed=0)    # fully supervised: the whole train split
    sweep = run_sweep(cfg)                         # cfg.finetune.shots × cfg.finetune.seeds + table/plot

Reports go to ``<run>/eval/fewshot/k<K>/seed<S>/`` (``<run>/eval/supervised/seed<S>/``) and the
sweep's summary to ``<run>/eval/fewshot/``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from c2p.config import config_hash, to_dict
from c2p.config.downstream import DownstreamConfig
from c2p.eval.errors import EvalError
from c2p.eval.features import ViewFeatureCache, cache_dir
from c2p.eval.report import classification_metrics, eval_dir, summarize_sweep, write_report, write_sweep_report
from c2p.eval.splits import Split, load_split, sample_shots
from c2p.eval.towers import build_towers, resolve_device, view_setting
from c2p.eval.zeroshot import prompt_names
from c2p.models.gdpa import GatedDualPathAdapter

__all__ = [
    "AdapterData",
    "train_adapter",
    "predict",
    "prepare",
    "run_fewshot",
    "run_sweep",
    "run_one",
    "sweep_configs",
    "collect_sweep",
    "result_dir",
]

log = logging.getLogger(__name__)


@dataclass
class AdapterData:
    """Cached frozen features of one split: clip/depth [N,V,D] float32 (None if the path is unused), labels [N]."""

    clip: Tensor | None
    depth: Tensor | None
    labels: Tensor

    def subset(self, idx: Tensor) -> "AdapterData":
        """The objects at ``idx`` ([K] long) of every feature and the labels."""
        return AdapterData(None if self.clip is None else self.clip[idx], None if self.depth is None else self.depth[idx], self.labels[idx])

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _batches(n: int, batch_size: int, g: torch.Generator) -> list[Tensor]:
    perm = torch.randperm(n, generator=g)
    chunks = list(perm.split(batch_size))
    # BatchNorm cannot train on one sample: fold a lone remainder into the previous batch
    if len(chunks) > 1 and chunks[-1].numel() == 1:
        chunks[-2] = torch.cat([chunks[-2], chunks.pop()])
    return chunks


def train_adapter(
    adapter: GatedDualPathAdapter,
    data: AdapterData,
    epochs: int,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    batch_size: int = 32,
    seed: int = 0,
    device: str | torch.device = "cpu",
    schedule: str = "constant",
) -> list[dict]:
    """Train ``adapter`` with AdamW and cross-entropy on cached features; returns per-epoch
    ``{epoch, loss, train_acc, gate, lr}``. Batch order and dropout are drawn from ``seed``.
    ``schedule``: "constant" lr, or "cosine" annealing from ``lr`` to 0 over the epochs (stepped per epoch)."""
    if len(data) < 2:
        raise EvalError(f"adapter training set: {len(data)} object(s); expected at least 2 (BatchNorm needs a batch)")
    torch.manual_seed(seed)  # dropout masks
    g = torch.Generator().manual_seed(seed)
    adapter.to(device).train()
    opt = torch.optim.AdamW([p for p in adapter.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule: got {schedule!r}; expected constant or cosine")
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs) if schedule == "cosine" else None
    clip = None if data.clip is None else data.clip.to(device)
    depth = None if data.depth is None else data.depth.to(device)
    labels = data.labels.to(device)
    history = []
    for epoch in range(epochs):
        total, correct, loss_sum = 0, 0, 0.0
        for idx in _batches(len(data), batch_size, g):
            idx = idx.to(device)
            logits = adapter(None if clip is None else clip[idx], None if depth is None else depth[idx])
            loss = adapter.loss(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * idx.numel()
            correct += int((logits.detach().argmax(1) == labels[idx]).sum())
            total += idx.numel()
        history.append({"epoch": epoch + 1, "loss": loss_sum / total, "train_acc": correct / total, "gate": adapter.gate, "lr": opt.param_groups[0]["lr"]})
        if sched is not None:
            sched.step()
    return history


@torch.no_grad()
def predict(adapter: GatedDualPathAdapter, data: AdapterData, batch_size: int = 256, device: str | torch.device = "cpu") -> Tensor:
    """Logits [N,C] of the adapter in eval mode (BatchNorm running statistics, no dropout)."""
    adapter.to(device).eval()
    out = []
    for s in range(0, len(data), batch_size):
        sl = slice(s, s + batch_size)
        clip = None if data.clip is None else data.clip[sl].to(device)
        depth = None if data.depth is None else data.depth[sl].to(device)
        out.append(adapter(clip, depth).cpu())
    return torch.cat(out)


@dataclass
class Prepared:
    """Everything a (K, seed) run needs, computed once per sweep: cached features, text features, identity."""

    train: AdapterData
    test: AdapterData
    classes: list[str]
    text_features: Tensor
    logit_scale: float
    num_views: int
    checkpoint_hash: str
    clip_hash: str


def prepare(cfg: DownstreamConfig) -> Prepared:
    """Load both splits, build the frozen towers and compute (or read cached) view features."""
    device = resolve_device(cfg.encoder.device)
    paths = cfg.adapter.paths
    if paths in ("both", "depth") and not cfg.encoder.depth_tower:
        raise EvalError(
            f"adapter.paths={paths!r} needs the CLIP2Point depth tower: encoder.depth_tower is empty; "
            "expected an exported depth tower (.safetensors), or adapter.paths=clip"
        )
    train = load_split(cfg.data, cfg.data.train_split)
    test = load_split(cfg.data, cfg.data.test_split)
    if train.classes != test.classes:
        raise EvalError(
            f"class lists of splits {cfg.data.train_split!r} ({len(train.classes)} classes) and "
            f"{cfg.data.test_split!r} ({len(test.classes)}) differ: only in train {sorted(set(train.classes) - set(test.classes))}, "
            f"only in test {sorted(set(test.classes) - set(train.classes))}; set data.classes to fix the order"
        )
    towers = build_towers(cfg.encoder, seed=cfg.run.seed, device=device)
    setting = view_setting(cfg.encoder, towers.model)
    from c2p.models.clip import encode_text

    text = encode_text(towers.model, towers.tokenizer, prompt_names(train.classes), cfg.encoder.templates).cpu()
    cache = ViewFeatureCache(cache_dir(cfg))

    def feats(split: Split) -> AdapterData:
        clip = cache.features(split.points, towers.clip_visual, setting, cfg.encoder.batch_size, device) if paths in ("both", "clip") else None
        depth = cache.features(split.points, towers.depth_visual, setting, cfg.encoder.batch_size, device) if paths in ("both", "depth") else None
        return AdapterData(clip, depth, split.labels)

    return Prepared(feats(train), feats(test), train.classes, text, towers.logit_scale, setting.num_views, towers.depth_hash, towers.clip_hash)


def result_dir(cfg: DownstreamConfig, shots: int, seed: int) -> Path:
    """``<run>/eval/fewshot/k<K>/seed<S>`` (K>0) or ``<run>/eval/supervised/seed<S>`` (K=0)."""
    if shots:
        return eval_dir(cfg) / "fewshot" / f"k{shots}" / f"seed{seed}"
    return eval_dir(cfg) / "supervised" / f"seed{seed}"


def run_fewshot(cfg: DownstreamConfig, shots: int, seed: int, prepared: Prepared | None = None) -> dict:
    """Train the adapter on ``shots`` objects per class (0: the whole train split, i.e. fully
    supervised), evaluate on the test split and write the report. Returns the results dict."""
    t0 = time.perf_counter()
    if shots < 0:
        raise EvalError(f"shots: got {shots}; expected K >= 1 (or 0 for the whole train split)")
    p = prepared if prepared is not None else prepare(cfg)
    num_classes = len(p.classes)
    if shots:
        idx = sample_shots(p.train.labels, num_classes, shots, seed)
        train = p.train.subset(idx)
    else:
        train = p.train
    device = resolve_device(cfg.encoder.device)
    torch.manual_seed(seed)  # adapter init
    adapter = GatedDualPathAdapter(
        p.text_features, p.num_views, paths=cfg.adapter.paths, dropout=cfg.adapter.dropout,
        gate_init=cfg.adapter.gate_init, logit_scale=p.logit_scale,
    )
    ft = cfg.finetune
    history = train_adapter(adapter, train, ft.epochs, ft.lr, ft.weight_decay, ft.batch_size, seed, device, ft.schedule)
    logits = predict(adapter, p.test, device=device)
    metrics, cm = classification_metrics(logits, p.test.labels, p.classes)
    results = {
        "task": "fewshot" if shots else "supervised",
        "run": cfg.run.name,
        "corpus": cfg.data.corpus,
        "split": cfg.data.test_split,
        "shots": shots,
        "seed": seed,
        "train_objects": len(train),
        "paths": cfg.adapter.paths,
        "gate": adapter.gate,
        "gate_init": cfg.adapter.gate_init,
        "epochs": ft.epochs,
        "final_loss": history[-1]["loss"],
        "final_train_acc": history[-1]["train_acc"],
        "metrics": metrics,
        "checkpoint_hash": p.checkpoint_hash,
        "clip_hash": p.clip_hash,
        "config_hash": config_hash(cfg, exclude=["finetune.shots", "finetune.seeds"]),
        "config": to_dict(cfg),
    }
    out = result_dir(cfg, shots, seed)
    paths = write_report(out, results, cm, p.classes)
    (out / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    torch.save(adapter.state_dict(), out / "adapter.pt")
    results["report"] = {k: str(v) for k, v in paths.items()}
    log.info(
        "%s K=%s seed=%d paths=%s: top-1 %.2f%% (train %d objects, gate %.3f, %.1fs)",
        results["task"], shots or "all", seed, cfg.adapter.paths, 100 * metrics["top1"], len(train), adapter.gate, time.perf_counter() - t0,
    )
    return results


def _sweep_shots(cfg: DownstreamConfig) -> list[int]:
    return [0] if cfg.finetune.task == "supervised" else list(cfg.finetune.shots)


def run_sweep(cfg: DownstreamConfig) -> dict:
    """Every (K, seed) of ``cfg.finetune`` in this process (features computed once), then the
    sweep table and plot. Returns ``{"runs": [...], "rows": [...], "report": {...}}``."""
    p = prepare(cfg)
    runs = [run_fewshot(cfg, k, s, prepared=p) for k in _sweep_shots(cfg) for s in cfg.finetune.seeds]
    return _write_sweep(cfg, runs)


def sweep_configs(cfg: DownstreamConfig) -> list[DownstreamConfig]:
    """One config per (K, seed) of the sweep, each with a single K and seed: the elements of a
    job array (each runs :func:`run_one`)."""
    return [
        dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, shots=[k or 1], seeds=[s]))
        for k in _sweep_shots(cfg)
        for s in cfg.finetune.seeds
    ]


def run_one(cfg: DownstreamConfig) -> dict:
    """The job of one sweep element: ``run_fewshot(cfg, K, S)`` for the config's single K and seed
    (K is ignored for ``finetune.task=supervised``). The view-feature cache is shared through
    ``encoder.cache_dir``, so elements after the first only read features."""
    ft = cfg.finetune
    if len(ft.seeds) != 1 or (ft.task == "fewshot" and len(ft.shots) != 1):
        raise EvalError(f"run_one: finetune.shots={ft.shots} finetune.seeds={ft.seeds}; expected exactly one K and one seed (see sweep_configs)")
    return run_fewshot(cfg, ft.shots[0] if ft.task == "fewshot" else 0, ft.seeds[0])


def collect_sweep(cfg: DownstreamConfig) -> dict:
    """Build the sweep table and plot from the results.json files that (array) tasks wrote.

    Raises :class:`EvalError` listing the (K, seed) runs whose results are missing.
    """
    runs, missing = [], []
    for k in _sweep_shots(cfg):
        for s in cfg.finetune.seeds:
            path = result_dir(cfg, k, s) / "results.json"
            if path.is_file():
                runs.append(json.loads(path.read_text()))
            else:
                missing.append((k, s))
    if missing:
        raise EvalError(f"sweep of run {cfg.run.name!r}: no results.json for (K, seed) {missing}; expected every task of the sweep to have finished")
    return _write_sweep(cfg, runs)


def _write_sweep(cfg: DownstreamConfig, runs: list[dict]) -> dict:
    task = "supervised" if cfg.finetune.task == "supervised" else "fewshot"
    title = f"{task} {cfg.data.corpus} ({cfg.adapter.paths}) — {cfg.run.name}"
    paths = write_sweep_report(eval_dir(cfg) / task, runs, title=title)
    return {"runs": runs, "rows": summarize_sweep(runs), "report": {k: str(v) for k, v in paths.items()}}
