"""The end-to-end demo: the paper's table in miniature, on one CPU machine, in minutes.

    python launch/demo.py                       # configs/demo/demo.yaml
    python launch/demo.py run.name=demo2 pretrain.steps=60 ...

No ShapeNet and no CLIP weights exist here, so the demo makes its own world and runs every
stage through the same entry points a user runs on a cluster:

1. ``world``     a synthetic corpus (c2p.corpora.synthetic), train and held-out splits;
2. ``render``    Ray job → WebDataset shards with RGB views and captions (launch/render.py);
3. ``clip``      a small CLIP trained on those renders and captions by open_clip's own trainer
                 (launch/train_clip.py → open_clip_train);
4. ``pretrain``  CLIP2Point pre-training with DeepSpeed on 2 local ranks from that CLIP
                 (launch/pretrain.py --cluster local), and the paper's ablation without the
                 intra-modality term;
5. ``zeroshot``  held-out zero-shot top-1: CLIP's image tower on depth maps (PointCLIP-style
                 baseline), the CLIP2Point depth tower, the ablation (launch/evaluate.py);
6. ``fewshot``   K-shot GDPA vs either path alone, over seeds (launch/finetune.py);
7. ``retrieval`` held-out depth→image retrieval top-1 before and after pre-training;
8. ``report``    ``<run>/report.md`` with the table, the claims checked, and plots.

Every stage logs to ``<run>/logs/<stage>.log``; a finished stage is not redone when the demo
is run again with the same ``run.name`` (delete the run directory to start over).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from c2p.config import ConfigError, load_config, to_yaml
from c2p.config.demo import DemoConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "demo" / "demo.yaml"


class StageFailed(RuntimeError):
    pass


@dataclass
class Stage:
    name: str
    what: str
    eta_s: float  # expected seconds with the default config, for the ETA display
    fn: Callable[["Demo"], None]


class Demo:
    """Runs the stages in order, shows progress, and remembers each stage's outputs."""

    def __init__(self, cfg: DemoConfig):
        self.cfg = cfg
        self.dir = (Path(cfg.run.dir) / cfg.run.name).absolute()
        self.logs = self.dir / "logs"
        self.results: dict = {}
        self.t0 = time.time()
        self.stage_times: dict[str, float] = {}

    # paths -------------------------------------------------------------------------------
    @property
    def world(self) -> Path:
        return self.dir / "world"

    def shards(self, split: str) -> Path:
        return self.dir / "shards" / split

    @property
    def clip_weights(self) -> Path:
        return self.dir / "clip" / "clip.safetensors"

    def tower(self, run: str) -> Path:
        return self.dir / run / "export" / "depth_tower.safetensors"

    # running -----------------------------------------------------------------------------
    def sh(self, stage: str, cmd: Sequence[str], label: str) -> str:
        """Run one command of a stage, its output in logs/<stage>.log; returns its stdout's last line."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{stage}.log"
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1")
        with open(log, "a") as f:
            f.write(f"$ {' '.join(map(str, cmd))}\n")
            f.flush()
            proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=f, text=True, cwd=REPO, env=env)
            lines = []
            for line in proc.stdout:  # type: ignore[union-attr]
                f.write(line)
                f.flush()
                lines.append(line.rstrip("\n"))
                self._status(label, line.strip())
            rc = proc.wait()
        if rc != 0:
            raise StageFailed(f"stage {stage}: {label} exited with {rc}; see {log}")
        return next((ln for ln in reversed(lines) if ln.strip()), "")

    def _status(self, label: str, detail: str = "") -> None:
        if not sys.stdout.isatty():
            return
        elapsed = time.time() - self.t0
        print(f"\r\033[K  {label} | {_mmss(elapsed)} elapsed | {detail[:70]}", end="", flush=True)

    def py(self, script: str, *args: object) -> list[str]:
        return [sys.executable, str(REPO / script), *map(str, args)]


def _mmss(s: float) -> str:
    return f"{int(s) // 60}:{int(s) % 60:02d}"


def _json_line(text: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise StageFailed(f"expected a JSON summary line, got {text[:200]!r}") from e


# ----------------------------------------------------------------------------- stages


def stage_world(d: Demo) -> None:
    from c2p.corpora.synthetic import SYNTHETIC_CLASSES

    w = d.cfg.world
    classes = SYNTHETIC_CLASSES[: w.classes]
    d.sh("world", [sys.executable, "-m", "c2p.corpora.synthetic", "--out", d.world, "--layout", "shapenet", "--per-class", w.per_class,
                   "--test-per-class", w.test_per_class, "--seed", d.cfg.run.seed, "--classes", *classes], "world")


def stage_render(d: Demo) -> None:
    w = d.cfg.world
    for split in ("train", "test"):
        d.sh("render", d.py("launch/render.py", "--corpus", "synthetic", "--root", d.world, "--out", d.shards(split), "--split", split, "--json",
                            f"views.image_size={w.image_size}", f"job.shard_size={w.shard_size}", f"job.points={w.points}",
                            f"job.seed={d.cfg.run.seed}", "job.previews=4"), f"render {split}")


def stage_clip(d: Demo) -> None:
    c = d.cfg.clip
    d.sh("clip", d.py("launch/train_clip.py", "--shards", d.shards("train"), "--out", d.dir / "clip", "--model", c.model,
                      "--epochs", c.epochs, "--batch-size", c.batch_size, "--lr", c.lr, "--seed", d.cfg.run.seed,
                      # threads and workers change the exact weights: fixed, so the same seed gives the same table
                      "--threads", c.threads, "--workers", 0), "small CLIP (open_clip_train)")


def _pretrain(d: Demo, name: str, intra: bool) -> None:
    p, w = d.cfg.pretrain, d.cfg.world
    d.sh("pretrain", d.py("launch/pretrain.py", "--config", REPO / "configs" / "demo" / "pretrain.yaml", "--cluster", "local",
                          "--tasks-per-node", p.ranks, f"run.dir={d.dir}", f"run.name={name}", f"run.seed={d.cfg.run.seed}",
                          f"data.shards=[{d.shards('train')}]", f"data.points={p.loaded_points}", f"depth.point_keep={p.point_keep}", f"data.image_size={w.image_size}",
                          f"depth.image_size={w.image_size}", f"depth.radius={w.depth_radius}", f"model.name={d.cfg.clip.model}", f"model.pretrained={d.clip_weights}",
                          f"train.steps={p.steps}", f"train.batch_size={p.batch_size}", f"train.zero_stage={p.zero_stage}",
                          f"optim.lr={p.lr}", f"loss.intra={str(intra).lower()}"), f"pretrain {name}")


def stage_pretrain(d: Demo) -> None:
    _pretrain(d, "c2p", intra=True)
    if d.cfg.pretrain.ablation:
        _pretrain(d, "c2p_nointra", intra=False)


def _downstream_args(d: Demo) -> list[str]:
    w = d.cfg.world
    return ["--config", str(REPO / "configs" / "demo" / "downstream.yaml"), "--root", str(d.world), f"run.dir={d.dir / 'eval'}",
            f"encoder.model={d.cfg.clip.model}", f"encoder.pretrained={d.clip_weights}", f"encoder.image_size={w.image_size}",
            f"encoder.views={d.cfg.fewshot.views}", f"encoder.radius={w.depth_radius}", f"encoder.cache_dir={d.dir / 'eval' / 'cache'}", f"run.seed={d.cfg.run.seed}"]


def stage_zeroshot(d: Demo) -> None:
    towers = {"CLIP image tower (PointCLIP-style)": None, "CLIP2Point depth tower": "c2p"}
    if d.cfg.pretrain.ablation:
        towers["CLIP2Point w/o intra-modality term"] = "c2p_nointra"
    out = {}
    for label, run in towers.items():
        args = ["--task", "zeroshot", "--json", "--name", f"zeroshot_{run or 'clip'}", *_downstream_args(d)]
        if run:
            args += ["--depth-tower", str(d.tower(run))]
        res = _json_line(d.sh("zeroshot", d.py("launch/evaluate.py", *args), f"zero-shot {label}"))
        out[label] = res["metrics"]["top1"]
    d.results["zeroshot"] = out


def stage_fewshot(d: Demo) -> None:
    f = d.cfg.fewshot
    out = {}
    for label, paths in (("CLIP path", "clip"), ("CLIP2Point path", "depth"), ("GDPA (both, gated)", "both")):
        args = ["--task", "fewshot", "--json", "--name", f"fewshot_{paths}", "--shots", *map(str, f.shots), "--seeds", *map(str, f.seeds),
                *_downstream_args(d), "--depth-tower", str(d.tower("c2p")), f"adapter.paths={paths}", f"finetune.epochs={f.epochs}"]
        res = _json_line(d.sh("fewshot", d.py("launch/finetune.py", *args), f"few-shot {label}"))
        out[label] = {str(r["shots"]): (r["top1_mean"], r["top1_std"]) for r in res["rows"]}
        d.results.setdefault("fewshot_plots", {})[label] = res["report"]["plot"]
    d.results["fewshot"] = out


def stage_retrieval(d: Demo) -> None:
    import torch

    from c2p.eval.retrieval import depth_image_retrieval, load_heldout
    from c2p.models.clip import create_clip, load_visual

    torch.manual_seed(0)
    data = load_heldout(d.shards("test"), points=d.cfg.pretrain.points, seed=d.cfg.run.seed)
    clip = create_clip(d.cfg.clip.model, str(d.clip_weights))
    size = d.cfg.world.image_size
    radius = d.cfg.world.depth_radius
    before = depth_image_retrieval(data, clip.visual, clip.visual, size, radius)
    after = depth_image_retrieval(data, clip.visual, load_visual(d.cfg.clip.model, str(d.tower("c2p"))), size, radius)
    d.results["retrieval"] = {"before": before["top1"], "after": after["top1"], "objects": before["objects"]}
    (d.dir / "retrieval.json").write_text(json.dumps({"before": before, "after": after}, indent=1))


def stage_report(d: Demo) -> None:
    text, claims = render_report(d)
    (d.dir / "report.md").write_text(text)
    (d.dir / "results.json").write_text(json.dumps({"results": d.results, "claims": claims}, indent=1, default=str))
    plot_report(d)


STAGES = [
    Stage("world", "synthetic corpus", 5, stage_world),
    Stage("render", "Ray → WebDataset shards", 20, stage_render),
    Stage("clip", "small CLIP, open_clip_train", 200, stage_clip),
    Stage("pretrain", "CLIP2Point, DeepSpeed x2 ranks", 210, stage_pretrain),
    Stage("zeroshot", "zero-shot on held-out objects", 23, stage_zeroshot),
    Stage("fewshot", "GDPA few-shot sweep", 50, stage_fewshot),
    Stage("retrieval", "depth→image retrieval", 9, stage_retrieval),
    Stage("report", "table, claims, plots", 3, stage_report),
]


# ----------------------------------------------------------------------------- report


def check_claims(r: dict) -> list[tuple[str, bool, str]]:
    """The paper's claims in miniature: ``[(claim, holds, evidence)]``, computed from the results."""
    zs = r["zeroshot"]
    base, c2p = zs["CLIP image tower (PointCLIP-style)"], zs["CLIP2Point depth tower"]
    claims = [("CLIP2Point zero-shot beats the PointCLIP-style baseline by >= 10 points", c2p - base >= 0.10,
               f"{100 * c2p:.1f}% vs {100 * base:.1f}% ({100 * (c2p - base):+.1f})")]
    if "CLIP2Point w/o intra-modality term" in zs:
        abl = zs["CLIP2Point w/o intra-modality term"]
        claims.append(("the full loss beats the ablation without the intra-modality term", c2p > abl, f"{100 * c2p:.1f}% vs {100 * abl:.1f}%"))
    fs = r["fewshot"]
    for k in fs["GDPA (both, gated)"]:
        g, g_std = fs["GDPA (both, gated)"][k]
        best_label = max(("CLIP path", "CLIP2Point path"), key=lambda p: fs[p][k][0])
        best, best_std = fs[best_label][k]
        tol = max(g_std, best_std)
        claims.append((f"GDPA >= the better single path at K={k} (within one seed std)", g + tol >= best,
                       f"{100 * g:.1f}% vs {best_label} {100 * best:.1f}% (std {100 * tol:.1f})"))
    ret = r["retrieval"]
    claims.append(("pre-training raises depth→image retrieval", ret["after"] > ret["before"], f"{100 * ret['before']:.1f}% → {100 * ret['after']:.1f}%"))
    return claims


def render_report(d: Demo) -> tuple[str, list]:
    r, cfg = d.results, d.cfg
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
    lines += [f"- {'HOLDS' if ok else 'FAILS'}: {claim} — {ev}" for claim, ok, ev in claims]
    lines += ["", "## Stage times", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in d.stage_times.items()]
    lines += ["", "![zero-shot and retrieval](report.png)", ""]
    return "\n".join(lines) + "\n", [{"claim": c, "holds": ok, "evidence": ev} for c, ok, ev in claims]


def plot_report(d: Demo) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = d.results
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
    fig.savefig(d.dir / "report.png", dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="c2p end-to-end demo (CPU, minutes).")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="demo config (default: configs/demo/demo.yaml)")
    p.add_argument("--stages", default=None, help=f"comma-separated stages to run (default all: {','.join(s.name for s in STAGES)})")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. pretrain.steps=60")
    args = p.parse_intermixed_args(argv)
    try:
        cfg = load_config(DemoConfig, args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    d = Demo(cfg)
    d.dir.mkdir(parents=True, exist_ok=True)
    (d.dir / "demo.yaml").write_text(to_yaml(cfg))
    state_path = d.dir / "demo_state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"done": [], "results": {}, "times": {}}
    d.results, d.stage_times = state["results"], state["times"]
    wanted = args.stages.split(",") if args.stages else [s.name for s in STAGES]
    unknown = set(wanted) - {s.name for s in STAGES}
    if unknown:
        print(f"error: --stages {args.stages!r}: unknown {sorted(unknown)}; expected names from {[s.name for s in STAGES]}", file=sys.stderr)
        return 2
    stages = [s for s in STAGES if s.name in wanted]
    total_eta = sum(s.eta_s for s in stages)
    print(f"c2p demo → {d.dir}  ({len(stages)} stages, about {_mmss(total_eta)} on a 2-core CPU)")
    for i, s in enumerate(stages, 1):
        remaining = sum(x.eta_s for x in stages[i - 1 :])
        if s.name in state["done"] and s.name != "report":
            print(f"[{i}/{len(stages)}] {s.name:<9} {s.what:<34} done before (delete {d.dir} to redo)")
            continue
        print(f"[{i}/{len(stages)}] {s.name:<9} {s.what:<34} elapsed {_mmss(time.time() - d.t0)}, ETA ~{_mmss(remaining)}", flush=True)
        t = time.time()
        try:
            s.fn(d)
        except StageFailed as e:
            print(f"\nerror: {e}", file=sys.stderr)
            return 1
        d.stage_times[s.name] = round(time.time() - t, 1)
        if sys.stdout.isatty():
            print("\r\033[K", end="")
        state["done"] = sorted(set(state["done"]) | {s.name})
        state_path.write_text(json.dumps(state, indent=1, default=str))
    if "report" in [s.name for s in stages]:
        print()
        print((d.dir / "report.md").read_text())
        print(f"total {_mmss(time.time() - d.t0)}. Produced:")
        for path in [d.dir / "report.md", d.dir / "report.png", d.dir / "results.json", d.shards("train"), d.shards("train") / "previews",
                     d.clip_weights, d.tower("c2p"), d.dir / "c2p" / "metrics.jsonl", d.dir / "eval", d.logs]:
            print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
