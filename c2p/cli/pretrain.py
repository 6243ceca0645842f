"""CLIP2Point pre-training on SLURM (through submitit) or as local processes.

    c2p-pretrain --config configs/pretrain/tiny.yaml --cluster local --tasks-per-node 2
    c2p-pretrain --config configs/pretrain/shapenet_vitb32.yaml --cluster slurm \\
        --nodes 4 --gpus-per-node 8 --cpus-per-task 10 --partition gpu --time 48:00:00 [key=value ...]
    c2p-pretrain ... --dry-run      # print the sbatch script and the resolved config
    c2p-pretrain --follow 1234      # wait for job 1234 (submitted with --no-wait), as --wait would

Order of events (nothing is written before the config and the request passed their checks):
the config is loaded and validated (``key=value`` overrides, paths made absolute); what the
ranks would read is checked (:func:`c2p.preflight.check_pretrain`: shards and their index,
the model name, the weights file loaded with ``weights_only`` and fitted to the model, image
sizes, the batch split over nodes x tasks x grad_accum, an explicit ``checkpoint.resume``);
the resource request is checked against the cluster (partition, node sizes, ``sbatch
--test-only``); ``<run.dir>/<run.name>/config.yaml`` is written; the job is submitted and its
id, log paths and the commands to follow or cancel it are printed. Each rank maps the
SLURM/submitit environment to torch.distributed (:mod:`c2p.cluster.env`) and runs
``c2p.train.pretrain.run``. On GPU nodes there is one process per GPU (``--tasks-per-node``
defaults to ``--gpus-per-node``).

Preemption/timeout: the job is requeued (submitit ``checkpoint()``) and resumes from the
run's ``latest`` committed checkpoint; a preemption loses at most ``checkpoint.every`` steps
(see :mod:`c2p.cluster.submit`). Re-running the same command on an existing run directory also
resumes it (``checkpoint.resume=auto``), unless a job still writes it: rank 0 of the job holds
the run directory's lease (:mod:`c2p.lease`), and a second launch is refused naming that job.
A rank that finishes no step for ``train.watchdog_s`` ends the job naming the rank that
stopped (:mod:`c2p.train.watchdog`); on SLURM it first asks SLURM to requeue the job (at most
``train.watchdog_requeues`` times), which then resumes from ``latest``.

Elastic (``--nodes MIN-MAX``): a job requeued after a lost node is shrunk to the nodes left
while a launcher waits for it: ``--wait``, or ``--follow JOB`` for one submitted without it
(:mod:`c2p.cluster.elastic`); it prints rank 0's result at the end, as ``--wait`` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Sequence

from c2p.cli.base import UsageError, command_parser, print_result, run_command
from c2p.cluster import ClusterOptions, add_cluster_args, follow, launch
from c2p.config import load_config, to_yaml
from c2p.config.pretrain import PretrainConfig
from c2p.lease import check_free
from c2p.preflight import check_pretrain

TARGET = "c2p.train.pretrain:run"


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(__doc__, PretrainConfig)
    add_cluster_args(p, job_name="c2p-pretrain")
    p.add_argument("--follow", metavar="JOB", help="wait for SLURM job JOB submitted earlier (--no-wait) as --wait would: "
                   "shrink it after a lost node (--nodes MIN-MAX), then print rank 0's result; takes no config")
    return p


def resolve_paths(cfg: PretrainConfig) -> PretrainConfig:
    """Paths made absolute, so that jobs find them whatever their working directory."""
    absolute = lambda p: str(Path(p).expanduser().absolute()) if p else p  # noqa: E731
    return dataclasses.replace(
        cfg,
        run=dataclasses.replace(cfg.run, dir=absolute(cfg.run.dir)),
        data=dataclasses.replace(cfg.data, shards=[absolute(s) for s in cfg.data.shards]),
        model=dataclasses.replace(cfg.model, pretrained=absolute(cfg.model.pretrained)),
        checkpoint=dataclasses.replace(cfg.checkpoint, resume=cfg.checkpoint.resume if cfg.checkpoint.resume in ("auto", "none")
                                       else absolute(cfg.checkpoint.resume)),
    )


def body(args: argparse.Namespace) -> int:
    if args.follow:
        if args.config or args.overrides:
            raise UsageError(f"--follow {args.follow} takes no config (given: {args.config or ' '.join(args.overrides)}); "
                             "the job runs the config it was submitted with")
        print_result(follow(args.follow))
        return 0
    cfg = resolve_paths(load_config(PretrainConfig, args.config, args.overrides))
    opts = ClusterOptions.from_args(args)
    # everything the ranks would read, checked here: a refusal leaves no run directory behind
    check_pretrain(cfg, nodes=opts.node_range, tasks_per_node=opts.tasks_per_node, gpus_per_node=opts.gpus_per_node)
    run_dir = Path(cfg.run.dir) / cfg.run.name
    check_free(run_dir, "run directory")  # one job per run directory; its rank 0 holds the lease (c2p.lease)
    print_result(launch(TARGET, cfg, opts, run_dir, config_text=to_yaml(cfg), dry_run=args.dry_run, wait_for_result=args.wait))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), body, argv)


if __name__ == "__main__":
    sys.exit(main())
