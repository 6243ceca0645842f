"""Zero-shot evaluation of a depth tower (or of CLIP's image tower, the PointCLIP-style baseline).

    python launch/evaluate.py --task zeroshot --config configs/downstream/zeroshot_modelnet40.yaml \\
        --root data/ModelNet40 --depth-tower runs/vitb32/export/depth_tower.safetensors \\
        [--cluster slurm|local] [--gpus-per-node 1 ...] [key=value ...]
    python launch/evaluate.py --task zeroshot --run runs/vitb32 --config ... --root ...   # that run's export; reports in runs/vitb32/eval/

Overrides are dotted keys of :class:`c2p.config.downstream.DownstreamConfig`
(``encoder.views=6``, ``data.classes=[...]``). The whole config and the inputs it names are
validated before anything is written or submitted. ``--cluster local`` (the default where no
SLURM is configured) runs in this process; ``--cluster slurm`` submits one job through
``launch/common.py``. Reports go to ``<run.dir>/<run.name>/eval/zeroshot/``.
Exit status: 0 done, 1 the evaluation failed, 2 bad arguments, config or inputs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from c2p.config import ConfigError, describe, load_config, to_yaml
from c2p.config.downstream import DownstreamConfig
from launch.common import ClusterOptions, LaunchError, add_cluster_args, launch

TARGETS = {"zeroshot": "c2p.eval.zeroshot:evaluate_zeroshot"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Zero-shot point-cloud classification with CLIP text features.",
        epilog="config keys: " + ", ".join(k for k, *_ in describe(DownstreamConfig)),
    )
    p.add_argument("--task", choices=sorted(TARGETS), default="zeroshot")
    add_downstream_args(p, depth_help="; omit for CLIP's image tower")
    p.add_argument("--json", action="store_true", help="print the results as one JSON line")
    add_cluster_args(p, job_name="c2p-eval")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    return p.parse_intermixed_args(argv)  # key=value overrides may come before or after flags


def add_downstream_args(p: argparse.ArgumentParser, depth_help: str = "") -> None:
    """The flags evaluate.py and finetune.py share; :func:`downstream_overrides` turns them into overrides."""
    p.add_argument("--config", help="YAML config (configs/downstream/*.yaml)")
    p.add_argument("--root", help="corpus root (data.root)")
    p.add_argument("--corpus", help="corpus reader (data.corpus)")
    p.add_argument("--depth-tower", help="exported depth tower .safetensors (encoder.depth_tower)" + depth_help)
    p.add_argument("--run", help="a pre-training run directory: its export/depth_tower.safetensors and model, reports in <run>/eval/")
    p.add_argument("--name", help="run name (run.name): reports go to <run.dir>/<name>/eval/")


def downstream_overrides(args: argparse.Namespace, flags: dict[str, object] | None = None) -> list[str]:
    """``--run``, the shared flags, the command's own ``flags`` (config key → value) and the
    ``key=value`` overrides, in that order (later wins)."""
    shared = {"data.root": args.root, "data.corpus": args.corpus, "encoder.depth_tower": args.depth_tower, "run.name": args.name}
    named = {**shared, **(flags or {})}
    return run_flags(args.run) + [f"{k}={v}" for k, v in named.items() if v is not None] + list(args.overrides)


def run_flags(run: str | None) -> list[str]:
    """``--run runs/<name>``: overrides evaluating that pre-training run's exported depth tower
    (``export/depth_tower.safetensors``; the model name from ``export/depth_tower.json``) with the
    reports under the same run (``runs/<name>/eval/``). Raises ConfigError if there is no export."""
    if not run:
        return []
    run_dir = Path(run)
    tower = run_dir / "export" / "depth_tower.safetensors"
    if not tower.is_file():
        raise ConfigError("--run", run, f"a pre-training run directory with {tower.relative_to(run_dir)} (run launch/export.py first)")
    out = [f"encoder.depth_tower={tower}", f"run.dir={run_dir.parent}", f"run.name={run_dir.name}"]
    info = run_dir / "export" / "depth_tower.json"
    if info.is_file():
        model = json.loads(info.read_text()).get("model")
        if model:
            out.append(f"encoder.model={model}")
    return out


def build_config(args: argparse.Namespace) -> DownstreamConfig:
    """Config from --config, --run, the named flags and the overrides (later wins); raises ConfigError."""
    return load_config(DownstreamConfig, args.config, downstream_overrides(args))


def check_inputs(cfg: DownstreamConfig) -> None:
    """Files the job will read must exist before anything is submitted."""
    if not Path(cfg.data.root).exists():
        raise ConfigError("data.root", cfg.data.root, "an existing corpus directory")
    for key, value in (("encoder.depth_tower", cfg.encoder.depth_tower), ("encoder.pretrained", cfg.encoder.pretrained)):
        if value and not Path(value).is_file():
            raise ConfigError(key, value, "an existing local weights file")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    # 1. parse + validate: nothing written yet
    try:
        cfg = build_config(args)
        check_inputs(cfg)
        opts = ClusterOptions.from_args(args)
    except (ConfigError, LaunchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from c2p.eval.zeroshot import eval_dir

    # 2. run: in this process (local) or as one SLURM job
    target = TARGETS[args.task]
    try:
        if opts.cluster == "local" and not args.dry_run:
            from c2p.corpora import CorpusError
            from c2p.eval.features import EvalError
            from c2p.eval.zeroshot import evaluate_zeroshot

            try:
                results = evaluate_zeroshot(cfg)
            except (EvalError, CorpusError) as e:  # bad inputs found while reading them
                print(f"error: {e}", file=sys.stderr)
                return 2
        else:
            results = launch(target, cfg, opts, eval_dir(cfg) / args.task, config_text=to_yaml(cfg), dry_run=args.dry_run, wait_for_result=args.wait)
            if not isinstance(results, dict):  # dry run, or a submitted job not waited for
                return 0
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    _print(results, args.json)
    return 0


def _print(results: dict, as_json: bool) -> None:
    m = results["metrics"]
    if as_json:
        print(json.dumps({k: v for k, v in results.items() if k != "config"}, default=str))
        return
    print(
        f"{results['task']} {results['corpus']}/{results['split']} ({results['encoder']}, {results['views']} views): "
        f"top-1 {100 * m['top1']:.2f}%  top-5 {100 * m['top5']:.2f}%  mean class acc {100 * m['mean_class_acc']:.2f}%  "
        f"over {m['n']} objects\nreport: {results['report']['markdown']}"
    )


if __name__ == "__main__":
    sys.exit(main())
