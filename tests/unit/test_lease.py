"""c2p.lease: one writer per directory (live owner refused, stale taken over, same SLURM job passes)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from c2p.lease import LEASE_NAME, Lease, LeaseHeld, check_free, job_identity, read_lease


@pytest.fixture(autouse=True)
def no_slurm(monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _plant(directory, *, owner="uuid-x", host=None, pid=None, age_s=0.0):
    """A lease record as another job would have left it; its heartbeat ``age_s`` seconds old."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LEASE_NAME
    path.write_text(json.dumps({"owner": owner, "host": host or socket.gethostname(), "pid": pid or os.getpid(),
                                "since": time.time() - age_s, "token": "planted"}))
    os.utime(path, (time.time() - age_s, time.time() - age_s))
    return path


def test_lease_is_taken_recorded_and_released(tmp_path):
    run = tmp_path / "runs" / "a"
    with Lease(run, "run directory") as lease:
        rec = read_lease(run)
        assert rec.token == lease.record.token and rec.pid == os.getpid() and rec.host == socket.gethostname()
        assert rec.owner.startswith("uuid-")
    assert not (run / LEASE_NAME).exists() and not run.exists()  # created by the lease, left empty: removed


def test_second_holder_on_a_live_directory_is_refused_naming_the_owner(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with Lease(run, "run directory"):
        with pytest.raises(LeaseHeld) as e:
            Lease(run, "run directory").acquire()
        msg = str(e.value)
        assert f"run directory {run} is in use by owner uuid-" in msg
        assert f"host {socket.gethostname()}, pid {os.getpid()}, since " in msg and "heartbeat 0s ago" in msg
        with pytest.raises(LeaseHeld, match="is in use by"):
            check_free(run, "run directory")
    check_free(run, "run directory")  # released: free again
    assert run.is_dir()  # not created by the lease: kept


def test_stale_lease_of_a_dead_local_pid_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = _dead_pid()
    _plant(tmp_path, pid=dead)
    check_free(tmp_path, "render output")  # stale: nothing to refuse
    with caplog.at_level(logging.WARNING, logger="c2p.lease"), Lease(tmp_path, "render output") as lease:
        assert read_lease(tmp_path).token == lease.record.token
    assert f"taking over the lease of owner uuid-x (host {socket.gethostname()}, pid {dead}" in caplog.text
    assert f"its process {dead} is gone from this host" in caplog.text


def test_lease_of_another_host_is_live_until_its_heartbeat_is_old(tmp_path, caplog):
    _plant(tmp_path, host="node-elsewhere", pid=1, age_s=5)
    with pytest.raises(LeaseHeld, match="host node-elsewhere, pid 1"):
        Lease(tmp_path, "run directory", stale_after_s=60).acquire()
    _plant(tmp_path, host="node-elsewhere", pid=1, age_s=120)
    with caplog.at_level(logging.WARNING, logger="c2p.lease"), Lease(tmp_path, "run directory", stale_after_s=60):
        pass
    assert "heartbeat is 120s old (> 60s)" in caplog.text


def test_requeued_slurm_job_of_the_run_passes(tmp_path, monkeypatch):
    # the requeued job starts on another node: the old lease's heartbeat is still fresh
    _plant(tmp_path, owner="slurm-4242", host="node-old", pid=1)
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    with pytest.raises(LeaseHeld, match="in use by job 4242 .*scancel 4242"):
        Lease(tmp_path, "run directory").acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert job_identity() == "slurm-4242"
    with Lease(tmp_path, "run directory") as lease:
        assert read_lease(tmp_path).owner == "slurm-4242" and read_lease(tmp_path).token == lease.record.token
    # array elements: array id + task id
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4200")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert job_identity() == "slurm-4200_3"


def test_same_job_whose_process_still_runs_here_is_refused(tmp_path, monkeypatch):
    # one SLURM allocation starting a second writer while the first still runs on this host
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    _plant(tmp_path, owner="slurm-77", pid=os.getpid())
    with pytest.raises(LeaseHeld, match="in use by job 77"):
        Lease(tmp_path, "run directory").acquire()


def test_heartbeat_is_refreshed_by_the_thread(tmp_path):
    with Lease(tmp_path, "run directory", refresh_s=0.05):
        path = tmp_path / LEASE_NAME
        os.utime(path, (1.0, 1.0))
        deadline = time.monotonic() + 10
        while path.stat().st_mtime == 1.0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert path.stat().st_mtime > 1.0


def test_unreadable_lease_is_refused_not_guessed(tmp_path):
    (tmp_path / LEASE_NAME).write_text("not json")
    with pytest.raises(LeaseHeld, match="unreadable lease"):
        Lease(tmp_path, "run directory").acquire()
