"""The demo's stages, and the runner that shows their progress and resumes a run.

Each stage runs the commands a user runs (``python -m c2p.cli.<name> --config <resolved YAML>``)
as subprocesses, their output in ``<run>/logs/<stage>.log``; the configs were built and
checked when the demo was loaded (:mod:`c2p.demo.settings`). ``<run>/demo_state.json`` records
the stages done, their results and times, so running the demo again with the same
``run.name`` skips them (the report is always rebuilt).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from c2p.cluster.errors import JobFailedError
from c2p.config.core import ConfigError
from c2p.demo.report import plot_report, render_report
from c2p.demo.settings import DemoPlan
from c2p.sharddir import ShardDir

__all__ = ["Stage", "StageFailed", "DemoRun", "STAGES", "STAGE_NAMES", "select_stages", "run_demo"]


class StageFailed(JobFailedError):
    """A stage's command exited non-zero or printed no usable result; the message names its log."""


@dataclass
class Stage:
    name: str
    what: str
    eta_s: float  # expected seconds with the default config, for the ETA display
    fn: Callable[["DemoRun"], None]


def command(name: str, *args: object) -> list[str]:
    """The argv of ``c2p.cli.<name>`` run by this interpreter (the installed package, no paths)."""
    return [sys.executable, "-m", f"c2p.cli.{name}", *map(str, args)]


class DemoRun:
    """One run of the demo: its plan, the results and stage times so far, and the command runner."""

    def __init__(self, plan: DemoPlan, results: dict | None = None, stage_times: dict[str, float] | None = None):
        self.plan, self.cfg, self.paths = plan, plan.cfg, plan.paths
        self.results: dict = {} if results is None else results
        self.stage_times: dict[str, float] = {} if stage_times is None else stage_times
        self.t0 = time.time()

    def sh(self, stage: str, cmd: Sequence[object], label: str) -> str:
        """Run one command of ``stage``, its output appended to ``logs/<stage>.log``; returns the
        last non-empty line of its stdout (where the commands print their JSON summary)."""
        logs = self.paths.logs
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{stage}.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(log, "a") as f:
            f.write(f"$ {' '.join(map(str, cmd))}\n")
            f.flush()
            # cwd: the logs folder. `python -m` imports from its working directory first, and the
            # run folder holds a `c2p/` pre-training run that would shadow the installed package.
            proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=f, text=True, cwd=logs, env=env)
            lines = []
            for line in proc.stdout:  # type: ignore[union-attr]
                f.write(line)
                f.flush()
                lines.append(line.rstrip("\n"))
                self.status(label, line.strip())
            rc = proc.wait()
        if rc != 0:
            raise StageFailed(f"stage {stage}: {label} exited with {rc}; see {log}")
        return next((ln for ln in reversed(lines) if ln.strip()), "")

    def status(self, label: str, detail: str = "") -> None:
        """One rewritten status line on a terminal (nothing when stdout is a file or a pipe)."""
        if not sys.stdout.isatty():
            return
        print(f"\r\033[K  {label} | {_mmss(time.time() - self.t0)} elapsed | {detail[:70]}", end="", flush=True)


def _mmss(s: float) -> str:
    return f"{int(s) // 60}:{int(s) % 60:02d}"


def _json_line(text: str, stage: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise StageFailed(f"stage {stage}: expected a JSON summary line, got {text[:200]!r}") from e


# ----------------------------------------------------------------------------- stages


def stage_world(d: DemoRun) -> None:
    from c2p.corpora.synthetic import SYNTHETIC_CLASSES

    w = d.cfg.world
    d.sh("world", [sys.executable, "-m", "c2p.corpora.synthetic", "--out", d.paths.world, "--layout", "shapenet", "--per-class", w.per_class,
                   "--test-per-class", w.test_per_class, "--seed", d.cfg.run.seed, "--classes", *SYNTHETIC_CLASSES[: w.classes]], "world")


def stage_render(d: DemoRun) -> None:
    for split in d.plan.render:
        d.sh("render", command("render", "--config", d.plan.render_file(split), "--json"), f"render {split}")


def stage_clip(d: DemoRun) -> None:
    c = d.cfg.clip
    d.sh("clip", command("train_clip", "--shards", d.paths.shards("train"), "--out", d.paths.clip_weights.parent, "--model", c.model,
                         "--epochs", c.epochs, "--batch-size", c.batch_size, "--lr", c.lr, "--seed", d.cfg.run.seed,
                         # threads and workers change the exact weights: fixed, so the same seed gives the same table
                         "--threads", c.threads, "--workers", 0), "small CLIP (open_clip_train)")


def stage_pretrain(d: DemoRun) -> None:
    for name in d.plan.pretrain:
        d.sh("pretrain", command("pretrain", "--config", d.plan.pretrain_file(name), "--cluster", "local", "--tasks-per-node", d.cfg.pretrain.ranks),
             f"pretrain {name}")


def stage_zeroshot(d: DemoRun) -> None:
    out = {}
    for label, cfg in d.plan.zeroshot.items():
        line = d.sh("zeroshot", command("evaluate", "--task", "zeroshot", "--json", "--config", d.plan.downstream_file(cfg)), f"zero-shot {label}")
        out[label] = _json_line(line, "zeroshot")["metrics"]["top1"]
    d.results["zeroshot"] = out


def stage_fewshot(d: DemoRun) -> None:
    out = {}
    for label, cfg in d.plan.fewshot.items():
        res = _json_line(d.sh("fewshot", command("finetune", "--json", "--config", d.plan.downstream_file(cfg)), f"few-shot {label}"), "fewshot")
        out[label] = {str(r["shots"]): (r["top1_mean"], r["top1_std"]) for r in res["rows"]}
        d.results.setdefault("fewshot_plots", {})[label] = res["report"]["plot"]
    d.results["fewshot"] = out


def stage_retrieval(d: DemoRun) -> None:
    import torch

    from c2p.eval.retrieval import depth_image_retrieval, load_heldout
    from c2p.models.clip import create_clip, load_visual

    torch.manual_seed(0)
    data = load_heldout(d.paths.shards("test"), points=d.cfg.pretrain.points, seed=d.cfg.run.seed)
    clip = create_clip(d.cfg.clip.model, str(d.paths.clip_weights))
    size, radius = d.cfg.world.image_size, d.cfg.world.depth_radius
    before = depth_image_retrieval(data, clip.visual, clip.visual, size, radius)
    after = depth_image_retrieval(data, clip.visual, load_visual(d.cfg.clip.model, str(d.paths.tower("c2p"))), size, radius)
    d.results["retrieval"] = {"before": before["top1"], "after": after["top1"], "objects": before["objects"]}
    (d.paths.dir / "retrieval.json").write_text(json.dumps({"before": before, "after": after}, indent=1))


def stage_report(d: DemoRun) -> None:
    text, claims = render_report(d.results, d.cfg, d.stage_times)
    (d.paths.dir / "report.md").write_text(text)
    (d.paths.dir / "results.json").write_text(json.dumps({"results": d.results, "claims": claims}, indent=1, default=str))
    plot_report(d.results, d.paths.dir / "report.png")


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
STAGE_NAMES = [s.name for s in STAGES]


def select_stages(names: str | None) -> list[Stage]:
    """``"world,render"`` → those stages in run order; None: all. Raises :class:`ConfigError`."""
    if not names:
        return list(STAGES)
    wanted = names.split(",")
    unknown = sorted(set(wanted) - set(STAGE_NAMES))
    if unknown:
        raise ConfigError("--stages", names, f"comma-separated names from {STAGE_NAMES} (unknown: {unknown})")
    return [s for s in STAGES if s.name in wanted]


def run_demo(plan: DemoPlan, stages: Sequence[Stage] = STAGES) -> list[Path]:
    """Run ``stages`` of a loaded demo, skipping those ``demo_state.json`` records as done.

    Writes the run directory (``demo.yaml``, the resolved configs), shows progress on stdout,
    prints the report and returns the paths produced (empty without the report stage).
    Raises :class:`StageFailed` (exit status 1 of the command).
    """
    paths = plan.paths
    paths.dir.mkdir(parents=True, exist_ok=True)
    plan.write_configs()
    state = json.loads(paths.state.read_text()) if paths.state.is_file() else {"done": [], "results": {}, "times": {}}
    d = DemoRun(plan, state["results"], state["times"])  # shared with state: each stage's results are saved with it
    print(f"c2p demo → {paths.dir}  ({len(stages)} stages, about {_mmss(sum(s.eta_s for s in stages))} on a 2-core CPU)")
    for i, s in enumerate(stages, 1):
        if s.name in state["done"] and s.name != "report":
            print(f"[{i}/{len(stages)}] {s.name:<9} {s.what:<34} done before (delete {paths.dir} to redo)")
            continue
        remaining = sum(x.eta_s for x in stages[i - 1 :])
        print(f"[{i}/{len(stages)}] {s.name:<9} {s.what:<34} elapsed {_mmss(time.time() - d.t0)}, ETA ~{_mmss(remaining)}", flush=True)
        t = time.time()
        try:
            s.fn(d)
        finally:
            if sys.stdout.isatty():  # clear the status line, whether the stage ended or failed
                print("\r\033[K", end="", flush=True)
        d.stage_times[s.name] = round(time.time() - t, 1)
        state["done"] = sorted(set(state["done"]) | {s.name})
        paths.state.write_text(json.dumps(state, indent=1, default=str))
    if "report" not in [s.name for s in stages]:
        return []
    produced = [paths.dir / "report.md", paths.dir / "report.png", paths.dir / "results.json", paths.shards("train"),
                ShardDir(paths.shards("train")).previews, paths.clip_weights, paths.tower("c2p"), paths.dir / "c2p" / "metrics.jsonl", paths.eval, paths.logs]
    print()
    print((paths.dir / "report.md").read_text())
    print(f"total {_mmss(time.time() - d.t0)}. Produced:")
    for path in produced:
        print(f"  {path}")
    return produced
