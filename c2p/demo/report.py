"""The demo's table, the paper's claims judged on it, and its plots: pure functions of the results.

The results dict the stages fill (and ``results.json`` keeps)::

    {"zeroshot":  {label: top1},                            # labels: BASELINE, FULL[, ABLATION]
     "fewshot":   {label: {"<K>": [top1_mean, top1_std]}},  # labels: the keys of FEWSHOT_PATHS
     "fewshot_plots": {label: path},
     "retrieval": {"before": top1, "after": top1, "objects": N}}

Accuracies are fractions in [0, 1]; the report prints percentages.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from c2p.config.demo import DemoConfig
from c2p.demo.settings import ABLATION, BASELINE, CLIP_PATH, DEPTH_PATH, FULL, GDPA

__all__ = ["Claim", "CLAIM_ZEROSHOT", "CLAIM_INTRA", "CLAIM_RETRIEVAL", "claim_gdpa", "check_claims", "render_report", "plot_report"]

CLAIM_ZEROSHOT = "CLIP2Point zero-shot beats the PointCLIP-style baseline by >= 10 points"
CLAIM_INTRA = "the full loss beats the ablation without the intra-modality term"
CLAIM_RETRIEVAL = "pre-training raises depth→image retrieval"


def claim_gdpa(k: str) -> str:
    """The few-shot claim's text at ``k`` shots per class."""
    return f"GDPA >= the better single path at K={k} (within one seed std)"


class Claim(NamedTuple):
    """One of the paper's claims in miniature: its text, whether it holds here, and the numbers."""

    claim: str
    holds: bool
    evidence: str


def check_claims(r: dict) -> list[Claim]:
    """The paper's claims judged on results ``r`` (the dict above), in the report's order:
    zero-shot gain, intra-modality term (when the ablation ran), GDPA at each K, retrieval."""
    zs = r["zeroshot"]
    base, c2p = zs[BASELINE], zs[FULL]
    claims = [Claim(CLAIM_ZEROSHOT, c2p - base >= 0.10, f"{100 * c2p:.1f}% vs {100 * base:.1f}% ({100 * (c2p - base):+.1f})")]
    if ABLATION in zs:
        abl = zs[ABLATION]
        claims.append(Claim(CLAIM_INTRA, c2p > abl, f"{100 * c2p:.1f}% vs {100 * abl:.1f}%"))
    fs = r["fewshot"]
    for k in fs[GDPA]:
        g, g_std = fs[GDPA][k]
        best_label = max((CLIP_PATH, DEPTH_PATH), key=lambda p: fs[p][k][0])
        best, best_std = fs[best_label][k]
        # one seed's spread is the noise floor of a K-shot mean: the larger of the two compared
        tol = max(g_std, best_std)
        claims.append(Claim(claim_gdpa(k), g + tol >= best, f"{100 * g:.1f}% vs {best_label} {100 * best:.1f}% (std {100 * tol:.1f})"))
    ret = r["retrieval"]
    claims.append(Claim(CLAIM_RETRIEVAL, ret["after"] > ret["before"], f"{100 * ret['before']:.1f}% → {100 * ret['after']:.1f}%"))
    return claims


def render_report(r: dict, cfg: DemoConfig, stage_times: dict[str, float]) -> tuple[str, list[dict]]:
    """``report.md``'s text for results ``r`` of a demo run with ``cfg``, and its claims as
    ``[{"claim", "holds", "evidence"}]`` (what ``results.json`` keeps). ``stage_times``: seconds."""
    lines = [f"# c2p demo: CLIP2Point in miniature ({cfg.run.name})", "",
             f"{cfg.world.classes}-class synthetic world, {cfg.world.per_class} training and {cfg.world.test_per_class} held-out objects "
             f"per class, {cfg.world.image_size}² renders; small CLIP `{cfg.clip.model}` trained by open_clip_train; "
             f"{cfg.pretrain.steps} CLIP2Point steps on {cfg.pretrain.ranks} DeepSpeed ranks (ZeRO-{cfg.pretrain.zero_stage}). "
             "Every number below was computed by this run.", "",
             "## Zero-shot top-1 (held-out objects)", "", "| encoder | top-1 (%) |", "|---|---|"]
    lines += [f"| {k} | {100 * v:.2f} |" for k, v in r["zeroshot"].items()]
    shots = list(next(iter(r["fewshot"].values())))
    lines += ["", f"## Few-shot top-1 (mean ± std over seeds {cfg.fewshot.seeds})", "",
              "| path | " + " | ".join(f"K={k}" for k in shots) + " |", "|---|" + "---|" * len(shots)]
    for label, row in r["fewshot"].items():
        lines.append(f"| {label} | " + " | ".join(f"{100 * row[k][0]:.2f} ± {100 * row[k][1]:.2f}" for k in shots) + " |")
    ret = r["retrieval"]
    lines += ["", "## Pre-training: depth→image retrieval top-1 (held-out)", "", "| before | after |", "|---|---|",
              f"| {100 * ret['before']:.2f} | {100 * ret['after']:.2f} |", "", "## Claims", ""]
    claims = check_claims(r)
    lines += [f"- {'HOLDS' if c.holds else 'FAILS'}: {c.claim} — {c.evidence}" for c in claims]
    lines += ["", "## Stage times", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in stage_times.items()]
    lines += ["", "![zero-shot and retrieval](report.png)", ""]
    return "\n".join(lines) + "\n", [c._asdict() for c in claims]


def plot_report(r: dict, path: str | Path) -> None:
    """Write ``path`` (PNG): zero-shot bars, few-shot curves over K with seed std, retrieval
    before and after pre-training, from results ``r``."""
    import matplotlib

    matplotlib.use("Agg")  # no display on the machines the demo runs on
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    zs = r["zeroshot"]
    axes[0].barh([k.replace(" (", "\n(") for k in zs], [100 * v for v in zs.values()], color=["#999", "#2a7", "#7a2"][: len(zs)])
    axes[0].set_xlabel("zero-shot top-1 (%)")
    for label, row in r["fewshot"].items():
        ks = [int(k) for k in row]
        axes[1].errorbar(ks, [100 * row[k][0] for k in row], yerr=[100 * row[k][1] for k in row], marker="o", capsize=3, label=label)
    axes[1].set_xscale("log", base=2)
    axes[1].set_xlabel("shots per class (K)")
    axes[1].set_ylabel("top-1 (%)")
    axes[1].legend(fontsize=8)
    ret = r["retrieval"]
    axes[2].bar(["before", "after"], [100 * ret["before"], 100 * ret["after"]], color=["#999", "#2a7"])
    axes[2].set_ylabel("depth→image top-1 (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
