"""Elastic node counts (``--nodes MIN-MAX``): a job requeued after a lost node restarts on the nodes left.

What happens when a node of a running job dies::

    slurmctld: node c2p-h2 not responding (SlurmdTimeout) -> DOWN
    the job is ended on every node and requeued (--requeue), keeping its node count
    requeued job: PENDING, reason "ReqNodeNotAvail, UnavailableNodes:c2p-h2"
    the launcher waiting for it (--wait, or c2p-pretrain --follow J after --no-wait):
        scontrol update JobId=J NumNodes=1 NumTasks=1
    the job starts on the node left; the trainer resumes from the last committed checkpoint at
    the smaller world size (a universal-format resume) and logs which host was lost

The job is submitted for its largest size (``--nodes=MAX``) and shrunk only once it is
stranded: requeued, and waiting for nodes that are down, drained or gone. Not SLURM's own
``--nodes=MIN-MAX``: for such a range its scheduler (select/cons_tres, slurm-wlm 22.05) picks the
fewest nodes that hold the job's tasks, so a job asking for 1-2 nodes starts on one node even
with two idle. A job not watched by a launcher waits, as any SLURM job does, until its nodes
are back: ``c2p-pretrain --follow JOB`` watches one submitted with ``--no-wait`` (the request
is recorded in the job's ``--comment``, :func:`elastic_comment`).

Each rank's task count comes from the allocation at start (the batch script's ``setup`` line,
:func:`task_count_setup`): the job's environment keeps the task count it was submitted with.
"""

from __future__ import annotations

import logging
import re
import subprocess
from typing import Any

from c2p.cluster.errors import LaunchError
from c2p.cluster.options import ClusterOptions
from c2p.cluster.slurm import run_command

log = logging.getLogger(__name__)

__all__ = ["task_count_setup", "parse_job", "count_usable", "shrink_if_stranded", "elastic_comment", "elastic_request"]

_USABLE_STATES = {"idle", "mixed", "allocated", "completing"}  # responding: no "*" suffix, not down/drained


def task_count_setup(opts: ClusterOptions) -> list[str]:
    """The batch-script lines that make srun start ``tasks_per_node`` ranks on each node the
    allocation has, whatever node count the job was submitted with."""
    n = f"$((SLURM_JOB_NUM_NODES * {opts.tasks_per_node}))"
    return ["# ranks from the allocation: a job shrunk after a lost node has fewer nodes than it was submitted with",
            f"export SLURM_NTASKS={n} SLURM_NPROCS={n}"]


_COMMENT = re.compile(r"c2p-elastic:(\d+)-(\d+):(\d+)")


def elastic_comment(opts: ClusterOptions) -> str:
    """The ``--comment`` of an elastic job, ``c2p-elastic:MIN-MAX:TASKS_PER_NODE``: what a launcher
    that follows the job later (``--follow``) needs to shrink it."""
    return f"c2p-elastic:{opts.min_nodes}-{opts.nodes}:{opts.tasks_per_node}"


def elastic_request(fields: dict[str, str]) -> ClusterOptions | None:
    """The elastic request a job's ``Comment`` (:func:`parse_job`'s fields) records; None for a job
    submitted with a fixed node count."""
    m = _COMMENT.fullmatch(fields.get("Comment", "").strip())
    if not m:
        return None
    return ClusterOptions(cluster="slurm", min_nodes=int(m[1]), nodes=int(m[2]), tasks_per_node=int(m[3]))


def parse_job(text: str) -> dict[str, str]:
    """``scontrol show job -o ID`` → its ``Key=Value`` fields (``JobState``, ``Reason``,
    ``NumNodes``, ``Restarts``, ``Partition``, ...); values run to the next `` Key=``."""
    key = r"[A-Za-z][\w/:]*"  # CPUs/Task, AllocNode:Sid, ReqB:S:C:T
    return dict(re.findall(rf"(?:^|\s)({key})=(.*?)(?=\s+{key}=|$)", text.strip()))


def count_usable(sinfo_text: str) -> int:
    """``sinfo -h -N -o '%N %T'`` → the number of distinct nodes that respond and take jobs."""
    return len({name for name, state in (line.split()[:2] for line in sinfo_text.splitlines() if len(line.split()) >= 2)
                if state in _USABLE_STATES})


def _run(cmd: list[str]) -> subprocess.CompletedProcess | None:
    """:func:`c2p.cluster.slurm.run_command`, None where SLURM did not answer (asked again at the next poll)."""
    try:
        return run_command(cmd, timeout=30)
    except LaunchError:
        return None


def shrink_if_stranded(job: Any, opts: ClusterOptions) -> int | None:
    """When ``job`` (a submitit job of an elastic request) was requeued and its partition has
    fewer responding nodes than it asks for (down, drained, not responding: it could not start
    before they are back), shrink it to those nodes (at least ``opts.min_nodes``); returns the
    new node count, None when nothing was changed."""
    if opts.min_nodes is None or opts.cluster != "slurm":
        return None
    shown = _run(["scontrol", "show", "job", "-o", str(job.job_id)])
    if shown is None or shown.returncode != 0:
        return None
    fields = parse_job(shown.stdout)
    # Not by its Reason: SLURM shows "BeginTime", then "None", for a while before "ReqNodeNotAvail".
    if fields.get("JobState") != "PENDING" or int(fields.get("Restarts", "0") or 0) < 1:
        return None
    m = re.match(r"\d+", fields.get("NumNodes", ""))  # "2" or "2-2"
    have = int(m.group(0)) if m else 0
    nodes = _run(["sinfo", "-h", "-N", "-p", fields.get("Partition", ""), "-o", "%N %T"])
    if nodes is None or nodes.returncode != 0:
        return None
    want = min(opts.nodes, count_usable(nodes.stdout))
    if want < opts.min_nodes or not 0 < want < have:
        return None
    tasks = want * opts.tasks_per_node
    done = _run(["scontrol", "update", f"JobId={job.job_id}", f"NumNodes={want}", f"NumTasks={tasks}"])
    if done is None or done.returncode != 0:
        log.warning("job %s waits for nodes that are down; shrinking it to %d node(s) failed: %s", job.job_id, want,
                    (done.stderr or done.stdout).strip() if done else "scontrol did not answer")
        return None
    log.warning("job %s was requeued and waits for %d node(s), %d of partition %s respond: restarting it on %d node(s), "
                "%d rank(s)", job.job_id, have, want, fields.get("Partition", "?"), want, tasks)
    return want
