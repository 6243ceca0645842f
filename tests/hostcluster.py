"""The multi-host test cluster of ``.ci/cluster.sh`` from Python: bring it up, take it down, kill a
host, list what runs on a host. Shared by tests/conftest.py's fixtures and the multi-host tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLUSTER_SH = REPO / ".ci" / "cluster.sh"


def cluster_sh(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``.ci/cluster.sh ARGS`` (up N, down, status, kill-host NAME)."""
    return subprocess.run(["bash", str(CLUSTER_SH), *args], capture_output=True, text=True, timeout=timeout)


def cluster_up(hosts: int) -> str:
    """Bring the cluster up with ``hosts`` hosts (a healthy one is left as it is); returns its slurm.conf."""
    r = cluster_sh("up", str(hosts))
    assert r.returncode == 0, f".ci/cluster.sh up {hosts} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout.strip().splitlines()[-1].split("=", 1)[1]


def namespace_pids(host: str) -> list[int]:
    """Every process running on ``host`` (in its network namespace)."""
    r = subprocess.run(["ip", "netns", "pids", host], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]
