"""Render a corpus into WebDataset shards with Ray.

    c2p-render --corpus synthetic --root data/synthetic --out data/shards/synthetic \\
        [--config configs/render/synthetic.yaml] [--address ray://host:10001] [key=value ...]
    c2p-render ... --cluster slurm --nodes 4     # a Ray cluster inside one SLURM job

Overrides are dotted config keys (``job.shard_size=64``, ``views.set=6``); a bare leaf name
that is unique in the config works too (``shard_size=64``, ``overwrite=true``). Everything is
validated before anything is written. Without ``--address`` a local Ray is started on this
machine. Exit status: 0 done, 1 some shards failed (re-run to retry them), 2 bad arguments,
config, corpus or an output holding another render.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from c2p import storage
from c2p.cli.base import command_parser, run_command
from c2p.cluster import ClusterOptions, add_cluster_args, run_ray_in_slurm
from c2p.config.core import ConfigError, describe, load_config
from c2p.config.render import RenderJobConfig
from c2p.corpora import CorpusError
from c2p.preflight import check_render
from c2p.shards import PlanMismatch, format_summary, run_render_job

TARGET = "c2p.shards.job:run_render_job"


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(__doc__, RenderJobConfig)
    p.add_argument("--corpus", help="corpus reader name (corpus.name)")
    p.add_argument("--root", help="corpus root directory (corpus.root)")
    p.add_argument("--out", help="output shard directory (out; default shards/<corpus>[-<split>] here)")
    p.add_argument("--split", help="corpus split (corpus.split)")
    p.add_argument("--address", default=None, help="Ray cluster to join (default: start a local Ray)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line instead of text")
    add_cluster_args(p, job_name="c2p-render")
    return p


def expand_overrides(overrides: Sequence[str]) -> list[str]:
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


def build_config(args: argparse.Namespace) -> RenderJobConfig:
    """Config from ``--config``, the named flags and the overrides; raises ConfigError. Without
    an output anywhere, shards go to ``shards/<corpus>[-<split>]`` in the working directory."""
    flags = {"corpus.name": args.corpus, "corpus.root": args.root, "out": args.out, "corpus.split": args.split}
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + expand_overrides(args.overrides)
    try:
        return load_config(RenderJobConfig, args.config, overrides)
    except ConfigError as e:
        if e.key != "out" or e.value:
            raise
    cfg = load_config(RenderJobConfig, args.config, [*overrides, "out=shards/_"])  # everything else validated
    return dataclasses.replace(cfg, out=str(Path("shards") / "-".join(p for p in (cfg.corpus.name, cfg.corpus.split) if p)))


def slurm_log_dir(out: str) -> Path:
    """Where the SLURM job's logs go: ``<out>.slurm`` beside a local output; for an ``s3://``
    output (no local folder to sit beside), ``shards/<bucket>-<prefix>.slurm`` here."""
    if storage.is_remote(out):
        return Path("shards").absolute() / (out[len(storage.SCHEME):].strip("/").replace("/", "-") + ".slurm")
    path = Path(out).absolute()
    return path.parent / f"{path.name}.slurm"


def body(args: argparse.Namespace) -> int:
    cfg = build_config(args)
    check_render(cfg)  # the output can be written, the feature weights load: before plan.json exists
    if args.cluster == "slurm":  # Ray head + workers inside one SLURM job, stopped afterwards
        summary = run_ray_in_slurm(TARGET, cfg, ClusterOptions.from_args(args), slurm_log_dir(cfg.out), dry_run=args.dry_run)
        if summary is None:  # --dry-run
            return 0
    else:
        summary = run_render_job(cfg, address=args.address)
    print(json.dumps(summary, sort_keys=True) if args.json else format_summary(summary), flush=True)
    return 1 if summary["shards_failed"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    # refused: the output holds another render (PlanMismatch), or the corpus cannot be read
    return run_command(build_parser(), body, argv, refused=(PlanMismatch, CorpusError), log_level=logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
