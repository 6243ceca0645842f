"""Where a run's ranks sit, and what changed since the checkpoint it resumes from.

A job that lost a node is requeued by SLURM and, asked for with ``--nodes MIN-MAX``, starts
again on the nodes left: fewer ranks, a universal-format resume. Its log then says which host
was lost, from which step it resumed and at which world size::

    resumed from step 10 (runs/x/checkpoints/step_00000010, universal format) at world size 1 on
    c2p-h1 (SLURM job 7, restart 1); step_00000010 was saved at world size 2 on c2p-h1, c2p-h2;
    no longer in the job: c2p-h2

The hosts of every rank are recorded in each checkpoint's commit marker (``hosts``, rank order).
"""

from __future__ import annotations

import os
import socket

from c2p.train.ckptverify import all_gather_objects

__all__ = ["job_hosts", "describe_resume"]


def job_hosts() -> list[str]:
    """Collective: the host name of every rank, in rank order (one entry without a process group)."""
    return [str(h) for h in all_gather_objects(socket.gethostname())]


def _restart() -> str:
    """`` (SLURM job J, restart N)`` on a requeued SLURM job, else ``""``."""
    job, restarts = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_RESTART_COUNT", "0")
    return f" (SLURM job {job}, restart {restarts})" if job and restarts not in ("", "0") else ""


def _names(hosts: list[str]) -> str:
    return ", ".join(dict.fromkeys(hosts))


def describe_resume(meta: dict, world_size: int, hosts: list[str], source: str = "") -> str:
    """One line for the log of a resumed run: the step (and ``source``, where it was loaded
    from), this job's world size and hosts, and the world size and hosts the checkpoint (its
    commit marker ``meta``) was saved at."""
    where = f" ({source})" if source else ""
    on = f" on {_names(hosts)}" if hosts else ""
    line = f"resumed from step {meta.get('step', '?')}{where} at world size {world_size}{on}{_restart()}"
    saved_world, saved_hosts = meta.get("world_size"), list(meta.get("hosts") or [])
    if saved_world == world_size and (not saved_hosts or set(saved_hosts) == set(hosts)):
        return line
    line += f"; {meta.get('tag', 'the checkpoint')} was saved at world size {saved_world}"
    if saved_hosts:
        line += f" on {_names(saved_hosts)}"
    if saved_hosts and hosts:  # both known: the hosts lost and gained since the save
        lost = [h for h in dict.fromkeys(saved_hosts) if h not in hosts]
        new = [h for h in dict.fromkeys(hosts) if h not in saved_hosts]
        line += f"; no longer in the job: {', '.join(lost)}" if lost else ""
        line += f"; new in the job: {', '.join(new)}" if new else ""
    return line
