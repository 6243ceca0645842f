"""Render a corpus into WebDataset shards with Ray.

    python launch/render.py --corpus synthetic --root data/synthetic --out data/shards/synthetic \
        [--config configs/render/synthetic.yaml] [--address ray://host:10001] [key=value ...]

Overrides are dotted config keys (``job.shard_size=64``, ``views.set=6``); a bare leaf name
that is unique in the config works too (``shard_size=64``, ``overwrite=true``). Everything is
validated before anything is written. Without ``--address`` a local Ray is started on this
machine. Exit status: 0 done, 1 some shards failed (re-run to retry them), 2 bad arguments,
config, corpus or an output holding another render.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from c2p.config.core import ConfigError, describe, load_config
from c2p.config.render import RenderJobConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="keys: " + ", ".join(k for k, *_ in describe(RenderJobConfig)))
    p.add_argument("--config", help="YAML render config (configs/render/*.yaml)")
    p.add_argument("--corpus", help="corpus reader name (corpus.name)")
    p.add_argument("--root", help="corpus root directory (corpus.root)")
    p.add_argument("--out", help="output shard directory (out)")
    p.add_argument("--split", help="corpus split (corpus.split)")
    p.add_argument("--address", default=None, help="Ray cluster to join (default: start a local Ray)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line instead of text")
    # LAUNCH: --cluster slurm runs the job on a Ray cluster inside one SLURM job (launch/common.py).
    from launch.common import add_cluster_args

    add_cluster_args(p, job_name="c2p-render")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    return p.parse_args(argv)


def expand_overrides(overrides: list[str]) -> list[str]:
    """``shard_size=64`` → ``job.shard_size=64`` where the bare name is a unique leaf key."""
    leaves: dict[str, list[str]] = {}
    for key, *_ in describe(RenderJobConfig):
        leaves.setdefault(key.rsplit(".", 1)[-1], []).append(key)
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if sep and "." not in key and key not in {"out"} and len(leaves.get(key, [])) == 1:
            key = leaves[key][0]
        out.append(f"{key}{sep}{value}")
    return out


def build(args: argparse.Namespace) -> RenderJobConfig:
    """Config from ``--config``, the named flags and the overrides; raises ConfigError."""
    flags = {"corpus.name": args.corpus, "corpus.root": args.root, "out": args.out, "corpus.split": args.split}
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + expand_overrides(args.overrides)
    return load_config(RenderJobConfig, args.config, overrides)


def run(cfg: RenderJobConfig, address: str | None = None) -> dict:
    from c2p.shards.job import run_render_job

    return run_render_job(cfg, address=address)


def main(argv: list[str] | None = None) -> int:
    from c2p.corpora import CorpusError
    from c2p.shards.job import format_summary
    from c2p.shards.plan import PlanMismatch

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        cfg = build(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.cluster == "slurm":  # LAUNCH: Ray head + workers inside one SLURM job, stopped afterwards
        from launch.common import ClusterOptions, JobFailedError, LaunchError, run_ray_in_slurm

        out = Path(cfg.out).absolute()
        try:
            summary = run_ray_in_slurm("launch.render:run", cfg, ClusterOptions.from_args(args), out.parent / f"{out.name}.slurm", dry_run=args.dry_run)
        except LaunchError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1 if isinstance(e, JobFailedError) else 2
        if summary is None:  # --dry-run
            return 0
    else:
        try:
            summary = run(cfg, args.address)
        except (PlanMismatch, CorpusError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    print(json.dumps(summary, sort_keys=True) if args.json else format_summary(summary), flush=True)
    return 1 if summary["shards_failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
