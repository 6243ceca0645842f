"""Map the cluster environment (SLURM through submitit, submitit's local executor, torchrun)
to the variables ``torch.distributed`` reads: RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
MASTER_ADDR, MASTER_PORT.

One small module, in the spirit of open_clip's ``distributed.py``: which variable means what,
and nothing else. Each task of a job calls :func:`setup_env_from_cluster` before it builds
its DeepSpeed engine (``init_process_group(init_method="env://")`` then reads the result).

Where the values come from, first match wins:

1. a submitit job (``SUBMITIT_EXECUTOR`` is ``slurm`` or ``local``): submitit's
   ``JobEnvironment`` (SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS / SLURM_JOB_NODELIST on
   SLURM, SUBMITIT_LOCAL_* on the local executor);
2. variables already set by a launcher that speaks torch's language (torchrun, or a test
   spawning ranks itself): RANK and WORLD_SIZE present;
3. a bare ``srun`` step (SLURM_PROCID and SLURM_NTASKS present, no submitit);
4. nothing: a single process, rank 0 of world 1 on 127.0.0.1 with a free port.

MASTER_ADDR is the first host of the job's node list (the node of rank 0), as the address
SLURM reaches it at (its ``NodeAddr``; the name where slurm.conf gives no address), so that
hosts whose names do not resolve everywhere still meet. On a job that spans nodes,
GLOO_SOCKET_IFNAME (unless set) names the interface that routes to MASTER_ADDR: gloo would
otherwise advertise the address the host name resolves to, loopback where it resolves to
nothing or to 127.0.1.1, and peers on other hosts could not connect. MASTER_PORT is
derived from the job id (``20000 + job_id % 20000``) so that two jobs sharing a node do not
race for one port; an explicit MASTER_PORT in the environment wins.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass

from c2p.cluster.netif import interface_towards
from c2p.cluster.slurm import node_address

__all__ = ["DistEnv", "setup_env_from_cluster", "read_cluster_env", "expand_nodelist", "port_for_job", "free_port"]

_PORT_BASE, _PORT_SPAN = 20000, 20000


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job. ``source`` says which environment it was read from
    (``submitit-slurm``, ``submitit-local``, ``torchrun``, ``srun``, ``single``)."""

    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int
    local_world_size: int = 1
    source: str = "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def as_env(self) -> dict[str, str]:
        """The torch.distributed variables, as strings."""
        return {
            "RANK": str(self.rank),
            "LOCAL_RANK": str(self.local_rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it; another process may
    still take it before it is used, so callers that can, bind it at once)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_for_job(job_id: str | int) -> int:
    """A rendezvous port in [20000, 40000) that is a pure function of the job id.

    Array elements have their own SLURM_JOB_ID, so concurrent elements on one node differ.
    """
    digits = re.sub(r"\D", "", str(job_id)) or "0"
    return _PORT_BASE + int(digits) % _PORT_SPAN


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compressed host list → host names, in order.

    ``"gpu[01-03,7],login1"`` → ``["gpu01", "gpu02", "gpu03", "gpu7", "login1"]``
    (leading zeros of a range are kept, as ``scontrol show hostnames`` does).
    """
    hosts: list[str] = []
    # Split on commas that are not inside brackets.
    for group in re.findall(r"[^,\[]+(?:\[[^\]]*\][^,\[]*)*", nodelist):
        prefixes = [""]
        for literal, ranges in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", group):
            prefixes = [p + literal for p in prefixes]
            if ranges:
                suffixes = []
                for part in ranges.split(","):
                    if "-" in part:
                        lo, hi = part.split("-", 1)
                        suffixes += [f"{i:0{len(lo)}d}" for i in range(int(lo), int(hi) + 1)]
                    else:
                        suffixes.append(part)
                prefixes = [p + s for p in prefixes for s in suffixes]
        hosts += [p for p in prefixes if p]
    return hosts


def _int_env(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        if default is None:
            raise KeyError(f"environment variable {name} is not set")
        return default
    try:
        return int(raw)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={raw!r}: expected an integer") from e


def read_cluster_env() -> DistEnv:
    """Read where this process sits, without changing the environment (see module docstring)."""
    explicit_port = os.environ.get("MASTER_PORT")
    executor = os.environ.get("SUBMITIT_EXECUTOR", "")
    if executor in ("slurm", "local"):
        import submitit  # lazy: only cluster jobs need it

        job = submitit.JobEnvironment()
        world, nodes = job.num_tasks, max(1, job.num_nodes)
        addr = "127.0.0.1" if executor == "local" else node_address(job.hostnames[0])
        port = int(explicit_port) if explicit_port else port_for_job(job.raw_job_id)
        return DistEnv(job.global_rank, job.local_rank, world, addr, port, max(1, world // nodes), f"submitit-{executor}")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        world = _int_env("WORLD_SIZE")
        return DistEnv(
            _int_env("RANK"),
            _int_env("LOCAL_RANK", 0),
            world,
            os.environ.get("MASTER_ADDR", "127.0.0.1"),
            int(explicit_port or 29500),
            _int_env("LOCAL_WORLD_SIZE", world),
            "torchrun",
        )
    if "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ:
        hosts = expand_nodelist(os.environ.get("SLURM_JOB_NODELIST", "") or os.environ.get("SLURM_NODELIST", ""))
        world, nodes = _int_env("SLURM_NTASKS"), max(1, _int_env("SLURM_JOB_NUM_NODES", 1))
        port = int(explicit_port) if explicit_port else port_for_job(os.environ.get("SLURM_JOB_ID", "0"))
        return DistEnv(
            _int_env("SLURM_PROCID"),
            _int_env("SLURM_LOCALID", 0),
            world,
            node_address(hosts[0]) if hosts else socket.gethostname(),
            port,
            max(1, world // nodes),
            "srun",
        )
    return DistEnv(0, 0, 1, "127.0.0.1", int(explicit_port) if explicit_port else free_port(), 1, "single")


def setup_env_from_cluster() -> DistEnv:
    """Read the cluster environment and export it as torch.distributed variables.

    Returns the :class:`DistEnv`; afterwards ``os.environ`` holds RANK, LOCAL_RANK,
    WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT (and, on a job that spans
    nodes, GLOO_SOCKET_IFNAME where it was unset and the route to MASTER_ADDR is known), so that
    ``torch.distributed.init_process_group(init_method="env://")`` (and DeepSpeed's
    ``init_distributed``) find them. Idempotent.
    """
    env = read_cluster_env()
    os.environ.update(env.as_env())
    if env.world_size > env.local_world_size and "GLOO_SOCKET_IFNAME" not in os.environ:
        ifname = interface_towards(env.master_addr)
        if ifname is not None:
            os.environ["GLOO_SOCKET_IFNAME"] = ifname
    return env
