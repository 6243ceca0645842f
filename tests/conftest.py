"""Shared fixtures. ``slurm_cluster``: a real single-node SLURM on this machine (``.ci/slurm.sh``),
started once per session for the tests that ask for it and stopped afterwards. ``multihost_cluster``:
a SLURM cluster of two hosts made of network namespaces (``.ci/cluster.sh``), brought up for the
tests that ask for it (again after a test killed a host) and taken down at the end. ``s3_server``: a
real S3-compatible server (SeaweedFS, ``tests/s3server.py``) on 127.0.0.1, with this process's
AWS_* variables pointing at it for the session.

The fixture does not export SLURM_CONF into this process's environment (that would switch
the default ``--cluster`` of every launcher run later in the session to slurm); tests pass
it explicitly (``monkeypatch.setenv`` or a subprocess ``env``).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hostcluster import cluster_sh, cluster_up

REPO = Path(__file__).resolve().parents[1]
SLURM_SH = REPO / ".ci" / "slurm.sh"


def _slurm(cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SLURM_SH), cmd], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """Path of the running cluster's slurm.conf (for SLURM_CONF)."""
    was_running = _slurm("status").returncode == 0
    r = _slurm("start")
    assert r.returncode == 0, f".ci/slurm.sh start failed:\n{r.stdout}\n{r.stderr}"
    conf = r.stdout.strip().splitlines()[-1].split("=", 1)[1]
    assert Path(conf).is_file(), conf
    yield conf
    if not was_running:  # leave a cluster someone else started (CI, a developer) as we found it
        _slurm("stop")


@pytest.fixture(scope="session")
def multihost_cluster() -> str:
    """Path of the multi-host cluster's slurm.conf (hosts c2p-h1, c2p-h2); down at the end of the session."""
    conf = cluster_up(2)
    yield conf
    r = cluster_sh("down")
    assert r.returncode == 0, f".ci/cluster.sh down failed:\n{r.stdout}\n{r.stderr}"


@pytest.fixture
def multihost_env(multihost_cluster) -> dict[str, str]:
    """A subprocess env pointed at the multi-host cluster, brought up again first if a previous
    test killed one of its hosts (``up`` is idempotent: a healthy cluster is left as it is).
    sbatch exports this environment to the job, PYTHONPATH included, on every host."""
    cluster_up(2)
    return dict(os.environ, SLURM_CONF=multihost_cluster, OMP_NUM_THREADS="1")


@pytest.fixture
def slurm_env(slurm_cluster, monkeypatch) -> dict[str, str]:
    """This process pointed at the test cluster (restored after the test); returns a subprocess env."""
    monkeypatch.setenv("SLURM_CONF", slurm_cluster)
    return dict(os.environ, SLURM_CONF=slurm_cluster, OMP_NUM_THREADS="1")


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> Path:
    """Two tiny shards of 16 random point clouds with one view and a random 64-d image feature
    (tag ``tiny``, c2p-tiny's embedding size): enough for the tiny pre-training config."""
    import numpy as np
    from testdata import object_sample, unit_sphere_points, write_shard_dir

    rng, n = np.random.default_rng(0), 16
    shards = [[object_sample("blobs", f"o{i:04d}", f"c{i % 4}", i % 4, unit_sphere_points(rng, 256),
                             views=[[0.0, 0.0, 1.0]], imgfeat={"tiny": rng.standard_normal((1, 64)).astype(np.float32)})
               for i in range(s, n, 2)] for s in range(2)]
    return write_shard_dir(tmp_path_factory.mktemp("launch-shards") / "blobs", shards, corpus="blobs", labels=[f"c{j}" for j in range(4)])


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A running SeaweedFS S3 server; this process's AWS_* environment points at it while the session lasts."""
    from s3server import SeaweedS3

    server = SeaweedS3(tmp_path_factory.mktemp("seaweed") / "data").start()
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    yield server
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
