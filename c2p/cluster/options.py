"""What a job asks for: :class:`ClusterOptions` (sbatch's options, typed and validated) and the
command-line flags every launcher shares (:func:`add_cluster_args`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from c2p.cluster.errors import LaunchError

__all__ = ["ClusterOptions", "add_cluster_args", "default_cluster", "parse_time", "parse_nodes", "mem_mb"]

_MEM = re.compile(r"(\d+)([KMGT]?)B?", flags=re.I)


def _slurm_configured() -> bool:
    """``sbatch`` is on PATH and a slurm.conf is reachable (SLURM_CONF or the usual places).

    Debian installs the client tools without a config; such a machine is not a cluster.
    """
    if shutil.which("sbatch") is None:
        return False
    conf = os.environ.get("SLURM_CONF")
    candidates = [conf] if conf else ["/etc/slurm/slurm.conf", "/etc/slurm-llnl/slurm.conf", "/usr/local/etc/slurm.conf"]
    return any(c and Path(c).is_file() for c in candidates)


def default_cluster() -> str:
    """``slurm`` where SLURM is usable from this machine, else ``local``."""
    return "slurm" if _slurm_configured() else "local"


def parse_time(value: str | int) -> int:
    """SLURM time → whole minutes. Accepts ``90``, ``"90"``, ``"MM:SS"``, ``"HH:MM:SS"``,
    ``"D-HH"``, ``"D-HH:MM"``, ``"D-HH:MM:SS"`` (seconds round up)."""
    if isinstance(value, int):
        minutes = value
    else:
        text = str(value).strip()
        m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
        if not m:
            raise LaunchError(f"--time {value!r}: expected minutes or [D-]HH:MM[:SS] (e.g. 90, 02:00:00, 1-12:00:00)")
        days, a, b, c = m.groups()
        if days is not None:  # D-HH[:MM[:SS]]
            minutes = int(days) * 1440 + int(a) * 60 + int(b or 0) + (1 if c and int(c) else 0)
        elif b is None:  # MM
            minutes = int(a)
        elif c is None:  # MM:SS
            minutes = int(a) + (1 if int(b) else 0)
        else:  # HH:MM:SS
            minutes = int(a) * 60 + int(b) + (1 if int(c) else 0)
    if minutes < 1:
        raise LaunchError(f"--time {value!r}: expected at least one minute")
    return minutes


def parse_nodes(value: str | int) -> tuple[int, int]:
    """``--nodes`` → ``(min, max)``: ``"2"`` → (2, 2); ``"1-2"`` → (1, 2), SLURM's min-max form."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(value))
    if not m:
        raise LaunchError(f"--nodes {value!r}: expected a node count (2) or a range MIN-MAX (1-2)")
    lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
    if not 1 <= lo <= hi:
        raise LaunchError(f"--nodes {value!r}: expected 1 <= MIN <= MAX")
    return lo, hi


def mem_mb(mem: str) -> int:
    """A SLURM memory size (``64G``, ``500M``, ``1T``; no unit = MB) → megabytes."""
    m = _MEM.fullmatch(mem.strip())
    if not m:
        raise LaunchError(f"--mem {mem!r}: expected a size such as 64G or 500M")
    scale = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[m.group(2).upper()]
    return int(int(m.group(1)) * scale)


@dataclass
class ClusterOptions:
    """Where and how a job runs. Field names follow sbatch's options."""

    cluster: str = "local"
    nodes: int = 1
    min_nodes: int | None = None
    """elastic jobs (``--nodes MIN-MAX``): submitted for ``nodes``; requeued after a lost node,
    the job goes on with the nodes left, down to ``min_nodes`` (:mod:`c2p.cluster.elastic`)"""
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: int = 60
    constraint: str | None = None
    mem: str | None = None
    exclusive: bool = False
    job_name: str = "c2p"
    sbatch: dict[str, Any] = field(default_factory=dict)
    signal_delay_s: int = 120
    max_requeues: int = 3
    array_parallelism: int = 64
    keep_on_node_failure: bool = False
    """the job goes on on the nodes left when one of its nodes fails (sbatch/srun ``--no-kill``),
    for jobs that survive a lost node by themselves, as a Ray cluster does; otherwise SLURM
    ends the job and requeues it"""

    @property
    def world_size(self) -> int:
        """Ranks on the most nodes the job may get."""
        return self.nodes * self.tasks_per_node

    @property
    def node_range(self) -> tuple[int, int]:
        """(fewest, most) nodes the job may run on."""
        return (self.min_nodes or self.nodes, self.nodes)

    @property
    def nodes_text(self) -> str:
        """sbatch's ``--nodes`` value: ``2``, or ``1-2`` for an elastic job."""
        lo, hi = self.node_range
        return str(hi) if lo == hi else f"{lo}-{hi}"

    def validate(self) -> None:
        if self.cluster not in ("slurm", "local"):
            raise LaunchError(f"--cluster {self.cluster!r}: expected slurm or local")
        for name in ("nodes", "tasks_per_node"):
            if getattr(self, name) < 1:
                raise LaunchError(f"--{name.replace('_', '-')} {getattr(self, name)}: expected at least 1")
        if self.min_nodes is not None and not 1 <= self.min_nodes <= self.nodes:
            raise LaunchError(f"--nodes {self.min_nodes}-{self.nodes}: expected 1 <= MIN <= MAX")
        if self.gpus_per_node < 0:
            raise LaunchError(f"--gpus-per-node {self.gpus_per_node}: expected 0 or more")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise LaunchError(f"--cpus-per-task {self.cpus_per_task}: expected at least 1")
        if self.mem is not None:
            mem_mb(self.mem)  # raises with the flag's name
        if self.gpus_per_node and self.tasks_per_node > self.gpus_per_node:
            raise LaunchError(
                f"--tasks-per-node {self.tasks_per_node} with --gpus-per-node {self.gpus_per_node}: "
                "expected at most one process per GPU"
            )
        if self.cluster == "local":
            if self.nodes != 1:
                raise LaunchError(f"--nodes {self.nodes_text} with --cluster local: the local executor runs on this machine only (expected 1)")
            if self.gpus_per_node:
                import torch  # lazy: only asked when GPUs are requested locally

                have = torch.cuda.device_count()
                if self.gpus_per_node > have:
                    raise LaunchError(f"--gpus-per-node {self.gpus_per_node} with --cluster local: this machine has {have} GPU(s)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ClusterOptions":
        """Options from the parsed flags of :func:`add_cluster_args` (validated)."""
        extra: dict[str, Any] = {}
        for item in args.sbatch or []:
            key, eq, value = item.partition("=")
            key = key.strip().lstrip("-")
            if not key:
                raise LaunchError(f"--sbatch {item!r}: expected an sbatch option such as mail-type=END or requeue")
            extra[key] = value if eq else True
        tasks = args.tasks_per_node if args.tasks_per_node is not None else max(1, args.gpus_per_node or 0)
        fewest, most = parse_nodes(args.nodes)
        opts = cls(
            cluster=args.cluster,
            nodes=most,
            min_nodes=fewest if fewest < most else None,
            tasks_per_node=tasks,
            gpus_per_node=args.gpus_per_node or 0,
            cpus_per_task=args.cpus_per_task,
            partition=args.partition,
            account=args.account,
            qos=args.qos,
            time=parse_time(args.time),
            constraint=args.constraint,
            mem=args.mem,
            exclusive=args.exclusive,
            job_name=args.job_name,
            sbatch=extra,
            signal_delay_s=args.signal_delay,
            max_requeues=args.max_requeues,
            array_parallelism=args.array_parallelism,
        )
        opts.validate()
        return opts


def add_cluster_args(parser: argparse.ArgumentParser, *, job_name: str = "c2p") -> None:
    """The resource flags every launcher shares (``--cluster``, ``--nodes``, ... ``--dry-run``)."""
    g = parser.add_argument_group("cluster (SLURM through submitit, or local processes)")
    g.add_argument("--cluster", choices=["slurm", "local"], default=default_cluster(), help="default: slurm where sbatch and a slurm.conf exist, else local (now: %(default)s)")
    g.add_argument("--nodes", default="1", help="nodes (SLURM): N, or MIN-MAX: asks for MAX; requeued after a lost node, "
                   "the job goes on with the nodes left, down to MIN, while a launcher waits for it (--wait, or c2p-pretrain --follow JOB); "
                   "pre-training resumes at the smaller world size")
    g.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node; one process per GPU")
    g.add_argument("--tasks-per-node", type=int, default=None, help="processes (ranks) per node (default: GPUs per node, or 1)")
    g.add_argument("--cpus-per-task", type=int, default=None, help="CPU cores per rank (data loader workers + 1)")
    g.add_argument("--partition", default=None)
    g.add_argument("--account", default=None)
    g.add_argument("--qos", default=None)
    g.add_argument("--time", default="60", help="wall time: minutes or [D-]HH:MM:SS (default 60)")
    g.add_argument("--constraint", default=None)
    g.add_argument("--mem", default=None, help="memory per node, e.g. 64G")
    g.add_argument("--exclusive", action="store_true")
    g.add_argument("--job-name", default=job_name)
    g.add_argument("--sbatch", action="append", metavar="KEY[=VALUE]", help="any other sbatch option, repeatable (e.g. --sbatch mail-type=END)")
    g.add_argument("--signal-delay", type=int, default=120, help="seconds between the USR2 warning and the end of the allocation")
    g.add_argument("--max-requeues", type=int, default=3, help="requeues after timeouts (preemptions do not count)")
    g.add_argument("--array-parallelism", type=int, default=64, help="job array elements running at once")
    g.add_argument("--dry-run", action="store_true", help="print the sbatch script and the resolved config; submit nothing")
    w = g.add_mutually_exclusive_group()
    w.add_argument("--wait", dest="wait", action="store_true", default=None, help="wait for the job and print its result (default for --cluster local)")
    w.add_argument("--no-wait", dest="wait", action="store_false", help="return after submission (default for --cluster slurm)")
