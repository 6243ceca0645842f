"""c2p.cluster.env: SLURM / submitit / torchrun environments → torch.distributed variables.

The environments are the real variables SLURM, submitit and torchrun set (read back through
submitit's own JobEnvironment where the job is a submitit job); the two-rank rendezvous over
these variables is exercised for real in tests/integration/test_launch_local.py (local processes) and test_slurm.py.
"""

from __future__ import annotations

import os

import pytest

from c2p.cluster.env import (
    DistEnv,
    expand_nodelist,
    port_for_job,
    read_cluster_env,
    setup_env_from_cluster,
)

_ALL = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SUBMITIT_EXECUTOR", "GLOO_SOCKET_IFNAME"]


@pytest.fixture
def clean_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith(("SLURM_", "SUBMITIT_")) or k in _ALL:
            monkeypatch.delenv(k, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("vm", ["vm"]),
        ("gpu[01-03,7],login1", ["gpu01", "gpu02", "gpu03", "gpu7", "login1"]),
        ("a1,b[2-3]", ["a1", "b2", "b3"]),
        ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
        ("node[009-011]", ["node009", "node010", "node011"]),
    ],
)
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


def test_port_is_a_function_of_the_job_id():
    assert port_for_job("1234") == port_for_job(1234) == 21234
    assert 20000 <= port_for_job("987654321") < 40000
    assert port_for_job("41") != port_for_job("42")  # two jobs sharing a node do not share a port


def test_single_process_without_cluster(clean_env):
    env = setup_env_from_cluster()
    assert env == DistEnv(0, 0, 1, "127.0.0.1", env.master_port, 1, "single")
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("0", "1", "0")
    # a port nobody holds: a bare process can open its world-1 process group at once
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", env.master_port))
    assert setup_env_from_cluster().master_port == env.master_port  # exported: a second call reads it back


def _slurm_task(monkeypatch, *, procid: int, localid: int, ntasks: int, nodes: int, nodelist: str, job_id: str = "4242") -> None:
    for k, v in {
        "SLURM_JOB_ID": job_id, "SLURM_PROCID": procid, "SLURM_LOCALID": localid, "SLURM_NTASKS": ntasks,
        "SLURM_JOB_NUM_NODES": nodes, "SLURM_NODEID": procid // (ntasks // nodes), "SLURM_JOB_NODELIST": nodelist,
    }.items():
        monkeypatch.setenv(k, str(v))


def test_submitit_slurm_job_maps_to_torch_distributed(clean_env):
    """Rank 5 of 2 nodes x 4 tasks: master is the first node of the allocation."""
    _slurm_task(clean_env, procid=5, localid=1, ntasks=8, nodes=2, nodelist="gpu[07-08]")
    clean_env.setenv("SUBMITIT_EXECUTOR", "slurm")
    env = setup_env_from_cluster()
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size) == (5, 1, 8, 4)
    assert (env.master_addr, env.master_port, env.source) == ("gpu07", port_for_job("4242"), "submitit-slurm")
    assert {k: os.environ[k] for k in env.as_env()} == {
        "RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "gpu07", "MASTER_PORT": str(port_for_job("4242"))
    }


def test_cluster_env_wins_over_stale_torch_variables(clean_env):
    """sbatch exports the submitting shell's environment: a stale RANK/WORLD_SIZE must not win."""
    _slurm_task(clean_env, procid=1, localid=1, ntasks=2, nodes=1, nodelist="vm")
    clean_env.setenv("SUBMITIT_EXECUTOR", "slurm")
    clean_env.setenv("RANK", "0")
    clean_env.setenv("WORLD_SIZE", "1")
    env = setup_env_from_cluster()
    assert (env.rank, env.world_size, os.environ["RANK"], os.environ["WORLD_SIZE"]) == (1, 2, "1", "2")


def test_explicit_master_port_wins(clean_env):
    _slurm_task(clean_env, procid=0, localid=0, ntasks=2, nodes=1, nodelist="vm")
    clean_env.setenv("SUBMITIT_EXECUTOR", "slurm")
    clean_env.setenv("MASTER_PORT", "31337")
    assert read_cluster_env().master_port == 31337


def test_submitit_local_executor(clean_env):
    for k, v in {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "777", "SUBMITIT_LOCAL_NTASKS": "2",
                 "SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1", "SUBMITIT_LOCAL_NODEID": "0",
                 "SUBMITIT_LOCAL_JOB_NUM_NODES": "1"}.items():
        clean_env.setenv(k, v)
    env = read_cluster_env()
    assert (env.rank, env.local_rank, env.world_size, env.master_addr, env.master_port) == (1, 1, 2, "127.0.0.1", port_for_job(777))


def test_bare_srun_step(clean_env):
    _slurm_task(clean_env, procid=3, localid=0, ntasks=4, nodes=4, nodelist="n[1-4]", job_id="99")
    env = read_cluster_env()
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size, env.master_addr, env.source) == (3, 0, 4, 1, "n1", "srun")


def test_torchrun_variables_are_kept(clean_env):
    for k, v in {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29400"}.items():
        clean_env.setenv(k, v)
    env = setup_env_from_cluster()
    assert (env.rank, env.world_size, env.master_addr, env.master_port, env.source) == (1, 2, "10.0.0.1", 29400, "torchrun")


def test_bad_variable_is_named(clean_env):
    clean_env.setenv("SLURM_PROCID", "x")
    clean_env.setenv("SLURM_NTASKS", "2")
    with pytest.raises(ValueError, match="SLURM_PROCID='x'"):
        read_cluster_env()


def test_loopback_is_no_interface_for_gloo():
    """A job whose rendezvous is this host's loopback (one node) needs no GLOO_SOCKET_IFNAME;
    the interface holding an address is found by the address (multi-host: tests/integration/test_multihost.py)."""
    from c2p.cluster.netif import interface_of_address, interface_towards, local_address_towards

    assert local_address_towards("127.0.0.1") == "127.0.0.1"
    assert interface_towards("127.0.0.1") is None
    assert interface_of_address("127.0.0.1") == "lo"
    assert interface_of_address("192.0.2.77") is None  # TEST-NET-1: held by no interface here


def test_single_node_job_leaves_gloo_interface_alone(clean_env):
    _slurm_task(clean_env, procid=1, localid=1, ntasks=2, nodes=1, nodelist="vm")
    clean_env.setenv("SUBMITIT_EXECUTOR", "slurm")
    setup_env_from_cluster()
    assert "GLOO_SOCKET_IFNAME" not in os.environ
