"""Launch a CLIP2Point pre-training run on SLURM (through submitit) or as local processes.

    python launch/pretrain.py --config configs/pretrain/tiny.yaml --cluster local --tasks-per-node 2
    python launch/pretrain.py --config configs/pretrain/shapenet_vitb32.yaml --cluster slurm \\
        --nodes 4 --gpus-per-node 8 --cpus-per-task 10 --partition gpu --time 48:00:00 [key=value ...]
    python launch/pretrain.py ... --dry-run      # print the sbatch script and the resolved config

Order of events (nothing is written before the config and the request passed their checks):
the config is loaded and validated (``key=value`` overrides, paths made absolute, shards and
weights checked to exist, the global batch checked to split over nodes x tasks x grad_accum);
the resource request is checked against the cluster (partition, node sizes, ``sbatch
--test-only``); ``<run.dir>/<run.name>/config.yaml`` is written; the job is submitted and its
id, log paths and the commands to follow or cancel it are printed. Each rank maps the
SLURM/submitit environment to torch.distributed (:mod:`c2p.distributed`) and runs
``c2p.train.pretrain.run``. On GPU nodes there is one process per GPU (``--tasks-per-node``
defaults to ``--gpus-per-node``).

Preemption/timeout: the job is requeued (submitit ``checkpoint()``) and resumes from the
run's ``latest`` committed checkpoint; a preemption loses at most ``checkpoint.every`` steps
(see :mod:`launch.common`). Re-running the same command on an existing run directory also
resumes it (``checkpoint.resume=auto``).

Exit status: 0 submitted (or finished, when waiting), 1 the job failed, 2 bad config or request.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from c2p.config import ConfigError, describe, load_config, to_yaml
from c2p.config.pretrain import PretrainConfig
from launch.common import ClusterOptions, JobFailedError, LaunchError, add_cluster_args, launch

TARGET = "c2p.train.pretrain:run"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="CLIP2Point pre-training on SLURM or local processes.",
        epilog="config keys: " + ", ".join(k for k, *_ in describe(PretrainConfig)),
    )
    p.add_argument("--config", help="YAML config (configs/pretrain/*.yaml)")
    add_cluster_args(p, job_name="c2p-pretrain")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.steps=20")
    return p.parse_intermixed_args(argv)  # overrides may come before or after the flags


def _expand_shards(entry: str) -> list[Path]:
    """A shard entry → the files/directories it names (brace patterns expanded)."""
    if "{" in entry:
        import braceexpand  # webdataset's own dependency, the same expansion its reader uses

        return [Path(p) for p in braceexpand.braceexpand(entry)]
    return [Path(entry)]


def resolve_paths(cfg: PretrainConfig) -> PretrainConfig:
    """Paths made absolute, so that jobs find them whatever their working directory."""
    absolute = lambda p: str(Path(p).expanduser().absolute()) if p else p  # noqa: E731
    return dataclasses.replace(
        cfg,
        run=dataclasses.replace(cfg.run, dir=absolute(cfg.run.dir)),
        data=dataclasses.replace(cfg.data, shards=[absolute(s) for s in cfg.data.shards]),
        model=dataclasses.replace(cfg.model, pretrained=absolute(cfg.model.pretrained)),
    )


def check_inputs(cfg: PretrainConfig, opts: ClusterOptions) -> None:
    """What the config alone cannot know: inputs exist, the batch splits over this world size."""
    for i, entry in enumerate(cfg.data.shards):
        for path in _expand_shards(entry):
            if path.is_dir():
                if not (path / "index.json").is_file():
                    raise ConfigError(f"data.shards[{i}]", entry, f"a shard directory holding index.json ({path / 'index.json'} is missing)")
            elif not path.is_file():
                raise ConfigError(f"data.shards[{i}]", entry, f"an existing shard directory or .tar files ({path} does not exist)")
    if cfg.model.pretrained and not Path(cfg.model.pretrained).is_file():
        raise ConfigError("model.pretrained", cfg.model.pretrained, "an existing local weights file (or empty for random init)")
    world = opts.world_size
    per_step = world * cfg.train.grad_accum
    if cfg.train.batch_size % per_step:
        raise ConfigError(
            "train.batch_size", cfg.train.batch_size,
            f"a multiple of nodes x tasks-per-node x train.grad_accum = {opts.nodes} x {opts.tasks_per_node} x {cfg.train.grad_accum} = {per_step}",
        )
    if cfg.train.backend == "nccl" and not opts.gpus_per_node:
        raise ConfigError("train.backend", "nccl", "gloo or auto when no GPUs are requested (--gpus-per-node 0)")
    if cfg.train.precision == "bf16" and not opts.gpus_per_node:
        raise ConfigError("train.precision", "bf16", "fp32 or auto on CPU ranks (--gpus-per-node 0)")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = resolve_paths(load_config(PretrainConfig, args.config, args.overrides))
        opts = ClusterOptions.from_args(args)
        check_inputs(cfg, opts)
    except (ConfigError, LaunchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run_dir = Path(cfg.run.dir) / cfg.run.name
    try:
        result = launch(TARGET, cfg, opts, run_dir, config_text=to_yaml(cfg), dry_run=args.dry_run, wait_for_result=args.wait)
    except JobFailedError as e:  # submitted, then failed: e names the logs
        print(f"error: {e}", file=sys.stderr)
        return 1
    except LaunchError as e:  # refused before submission: nothing was left behind
        print(f"error: {e}", file=sys.stderr)
        return 2
    if isinstance(result, dict):
        print(json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
