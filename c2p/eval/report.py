"""Classification metrics and the reports people read: ``results.json``, a markdown table, a
confusion-matrix PNG, and for a few-shot sweep a mean ± std table per K with an accuracy-vs-K plot.
They go under :func:`eval_dir`, ``<run.dir>/<run.name>/eval/``.

Nothing here depends on time or host, so re-running an evaluation with the same seeds writes
the same files (the PNGs carry no timestamp).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from c2p.config.downstream import DownstreamConfig

__all__ = ["eval_dir", "classification_metrics", "confusion_matrix", "write_report", "write_sweep_report", "summarize_sweep"]

# no "Software"/date chunks: identical inputs give identical PNG bytes
_PNG_META = {"Software": None}


def eval_dir(cfg: DownstreamConfig) -> Path:
    """``<run.dir>/<run.name>/eval``: where the reports of a downstream run go."""
    return Path(cfg.run.dir) / cfg.run.name / "eval"


def confusion_matrix(pred: Tensor, labels: Tensor, num_classes: int) -> np.ndarray:
    """[C,C] int64 counts; row = true class, column = predicted class."""
    idx = labels.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes).numpy()


def classification_metrics(logits: Tensor, labels: Tensor, classes: list[str]) -> tuple[dict, np.ndarray]:
    """logits: [N,C] float, labels: [N] long → (metrics, confusion [C,C]).

    metrics: ``top1``, ``top3`` (top-min(3,C)), ``top5`` (top-min(5,C)), ``mean_class_acc`` (mean over the classes that occur
    in ``labels``), ``per_class_acc`` (name → accuracy, None for a class without samples), ``n``.
    Accuracies are fractions in [0, 1].
    """
    if logits.dim() != 2 or logits.shape[0] != labels.shape[0] or logits.shape[1] != len(classes):
        raise ValueError(f"logits {list(logits.shape)} / labels {list(labels.shape)}: expected [N,{len(classes)}] and [N]")
    if labels.numel() == 0:
        raise ValueError("labels: got an empty split; expected at least one evaluated object")
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    pred = topk[:, 0]
    top1 = (pred == labels).float().mean().item()
    hit = topk == labels[:, None]
    top5 = hit.any(dim=1).float().mean().item()
    top3 = hit[:, :3].any(dim=1).float().mean().item()
    cm = confusion_matrix(pred, labels, len(classes))
    support = cm.sum(axis=1)
    per_class = {c: (float(cm[i, i] / support[i]) if support[i] else None) for i, c in enumerate(classes)}
    present = [v for v in per_class.values() if v is not None]
    metrics = {
        "top1": top1,
        "top3": top3,
        "top5": top5,
        "top5_k": k,
        "mean_class_acc": float(np.mean(present)),
        "per_class_acc": per_class,
        "n": int(labels.numel()),
    }
    return metrics, cm


def _markdown(results: dict) -> str:
    m = results["metrics"]
    lines = [
        f"# {results.get('task', 'evaluation')}: {results.get('run', '')}",
        "",
        "| corpus | split | n | top-1 | top-5 | mean class acc |",
        "|---|---|---|---|---|---|",
        f"| {results.get('corpus', '')} | {results.get('split', '')} | {m['n']} | {100 * m['top1']:.2f} | "
        f"{100 * m['top5']:.2f} | {100 * m['mean_class_acc']:.2f} |",
        "",
        "| class | accuracy |",
        "|---|---|",
    ]
    for c, a in m["per_class_acc"].items():
        lines.append(f"| {c} | {'—' if a is None else f'{100 * a:.2f}'} |")
    lines.append("")
    for key in ("checkpoint_hash", "clip_hash", "config_hash"):
        if results.get(key):
            lines.append(f"- {key}: `{results[key]}`")
    return "\n".join(lines) + "\n"


def _plot_confusion(path: Path, cm: np.ndarray, classes: list[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = len(classes)
    size = max(4.0, min(20.0, 0.35 * c + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    rows = cm.sum(axis=1, keepdims=True)
    ax.imshow(cm / np.maximum(rows, 1), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(c), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(c), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if c <= 20:
        for i in range(c):
            for j in range(c):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata=_PNG_META)
    plt.close(fig)


def write_report(out_dir: str | Path, results: dict, confusion: np.ndarray, classes: list[str]) -> dict[str, Path]:
    """Write ``results.json`` (results + confusion matrix), ``results.md`` and ``confusion.png`` to ``out_dir``.

    ``results`` holds ``metrics`` (from :func:`classification_metrics`) and whatever identifies the
    run (task, corpus, split, config, checkpoint_hash, ...). Returns the written paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = dict(results, classes=list(classes), confusion=np.asarray(confusion).tolist())
    paths = {"json": out / "results.json", "markdown": out / "results.md", "confusion": out / "confusion.png"}
    paths["json"].write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    paths["markdown"].write_text(_markdown(results))
    _plot_confusion(paths["confusion"], np.asarray(confusion), list(classes), f"{results.get('task', '')} top-1 {100 * results['metrics']['top1']:.1f}%")
    return paths


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    # sample std over seeds (0 for a single seed)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarize_sweep(runs: list[dict]) -> list[dict]:
    """Per K: mean and std over seeds of top-1, top-5 and mean class accuracy (fractions).

    ``runs``: results dicts with ``shots`` (K; None or 0 = whole train split), ``seed`` and ``metrics``.
    Returns rows sorted by K (supervised last).
    """
    groups: dict[Any, list[dict]] = defaultdict(list)
    for r in runs:
        groups[r.get("shots") or 0].append(r)
    rows = []
    for k in sorted(groups, key=lambda x: (x == 0, x)):
        rs = sorted(groups[k], key=lambda r: r["seed"])
        row = {"shots": k, "seeds": [r["seed"] for r in rs]}
        for m in ("top1", "top5", "mean_class_acc"):
            row[f"{m}_mean"], row[f"{m}_std"] = _mean_std([r["metrics"][m] for r in rs])
        rows.append(row)
    return rows


def write_sweep_report(out_dir: str | Path, runs: list[dict], title: str = "few-shot sweep") -> dict[str, Path]:
    """Write ``sweep.json`` (rows of :func:`summarize_sweep` + each run's metrics), ``sweep.md``
    (mean ± std over seeds per K, in %) and ``accuracy_vs_k.png`` to ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize_sweep(runs)
    paths = {"json": out / "sweep.json", "markdown": out / "sweep.md", "plot": out / "accuracy_vs_k.png"}
    per_run = [{k: r.get(k) for k in ("shots", "seed", "paths", "gate", "checkpoint_hash")} | {"metrics": {m: r["metrics"][m] for m in ("top1", "top5", "mean_class_acc")}} for r in runs]
    paths["json"].write_text(json.dumps({"title": title, "rows": rows, "runs": per_run}, indent=2, default=str) + "\n")

    lines = [f"# {title}", "", "| K | seeds | top-1 (%) | top-5 (%) | mean class acc (%) |", "|---|---|---|---|---|"]
    for r in rows:
        k = "all" if r["shots"] == 0 else str(r["shots"])
        cells = [f"{100 * r[f'{m}_mean']:.2f} ± {100 * r[f'{m}_std']:.2f}" for m in ("top1", "top5", "mean_class_acc")]
        lines.append(f"| {k} | {len(r['seeds'])} | " + " | ".join(cells) + " |")
    paths["markdown"].write_text("\n".join(lines) + "\n")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ks = [r for r in rows if r["shots"]]
    if ks:
        x = [r["shots"] for r in ks]
        for m, label in (("top1", "top-1"), ("mean_class_acc", "mean class acc")):
            y = [100 * r[f"{m}_mean"] for r in ks]
            e = [100 * r[f"{m}_std"] for r in ks]
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [str(v) for v in x])
    for r in rows:
        if not r["shots"]:
            ax.axhline(100 * r["top1_mean"], ls="--", color="gray", label="supervised top-1")
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.set_xlabel("shots per class (K)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths["plot"], dpi=100, metadata=_PNG_META)
    plt.close(fig)
    return paths
