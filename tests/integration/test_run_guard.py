"""A run you can leave alone: a stopped rank ends the job naming it, and one job per run directory.

Real local jobs: ``launch/pretrain.py --cluster local --tasks-per-node 2`` (submitit's local
processes, DeepSpeed over gloo, the tiny config); the rank pids come from the ranks' heartbeat files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from testdata import tiny_overrides

from c2p.lease import LEASE_NAME, check_free, read_lease
from c2p.train.watchdog import HEARTBEAT_DIR

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "pretrain" / "tiny.yaml"
WATCHDOG_S = 20


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("SLURM_CONF", None)
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        env.pop(name, None)
    return env


def _command(shards: Path, runs: Path) -> list[str]:
    # Long enough that it is still training when the test intervenes; checkpoints far apart.
    return [sys.executable, "launch/pretrain.py", "--config", str(TINY), "--cluster", "local", "--tasks-per-node", "2",
            *tiny_overrides(shards, runs, "guarded", "train.steps=100000", "checkpoint.every=100000",
                            "checkpoint.export=false", f"train.watchdog_s={WATCHDOG_S}")]


def _rank_pids_after_first_step(run: Path, launcher: subprocess.Popen, timeout: float = 300) -> dict[int, int]:
    """Rank -> pid, read from the heartbeat files once both ranks finished a step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert launcher.poll() is None, f"launcher ended early:\n{launcher.communicate()[1][-3000:]}"
        beats = {}
        for rank in (0, 1):
            try:
                beats[rank] = json.loads((run / HEARTBEAT_DIR / f"rank_{rank:05d}.json").read_text())
            except (OSError, ValueError):
                pass
        if len(beats) == 2 and all(b["step"] >= 1 for b in beats.values()):
            return {r: b["pid"] for r, b in beats.items()}
        time.sleep(0.5)
    raise AssertionError(f"no step on both ranks within {timeout}s")


def _kill(pids) -> None:
    for pid in pids:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.slow
def test_stopped_rank_ends_the_job_naming_it_and_a_second_launch_is_refused(tmp_path, tiny_shards):
    run = tmp_path / "runs" / "guarded"
    cmd = _command(tiny_shards, tmp_path / "runs")
    launcher = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids: dict[int, int] = {}
    try:
        pids = _rank_pids_after_first_step(run, launcher)
        owner = read_lease(run)
        assert owner is not None and owner.pid == pids[0]  # rank 0 holds the run directory

        # one job per run directory: the same command again is refused before it writes anything
        config_before = (run / "config.yaml").stat().st_mtime_ns
        second = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"run directory {run} is in use by owner {owner.owner} (host {owner.host}, pid {pids[0]}, since" in second.stderr
        assert (run / "config.yaml").stat().st_mtime_ns == config_before

        # a stopped rank: the other one's watchdog ends the job, naming it
        os.kill(pids[1], signal.SIGSTOP)
        stopped_at = time.monotonic()
        out, err = launcher.communicate(timeout=WATCHDOG_S + 120)  # the watchdog, then the launcher's poll
        ended_after = time.monotonic() - stopped_at
        assert launcher.returncode == 1, err[-3000:]  # the job failed (JobFailedError)
        assert "watchdog: rank 0 finished no optimizer step for" in err and f"train.watchdog_s = {WATCHDOG_S}" in err
        assert f"rank 1 (pid {pids[1]} on " in err and "stopped running" in err and "(frozen, dead or unreachable; last reported step" in err
        step = int(err.split("watchdog: rank 0 finished no optimizer step for")[1].split("after step ")[1].split(";")[0])
        assert step >= 1
        assert ended_after >= WATCHDOG_S  # ended by the watchdog, not by anything quicker
        for pid in pids.values():  # the whole job ended: the stopped rank was killed by the launcher
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
        check_free(run, "run directory")  # the dead job's lease is stale: the next run may take it over
    finally:
        if launcher.poll() is None:
            launcher.kill()
        _kill(pids.values())


@pytest.mark.slow
def test_killing_the_launcher_alone_leaves_the_run_directory_held(tmp_path, tiny_shards):
    run = tmp_path / "runs" / "guarded"
    cmd = _command(tiny_shards, tmp_path / "runs")
    launcher = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids: dict[int, int] = {}
    controller = None
    try:
        pids = _rank_pids_after_first_step(run, launcher)
        controller = _ppid(pids[0])
        launcher.kill()
        launcher.wait(timeout=30)
        assert Path(f"/proc/{pids[0]}").exists()  # the ranks still train
        second = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and f"pid {pids[0]}, since" in second.stderr, second.stderr[-3000:]
        assert (run / LEASE_NAME).is_file()
    finally:
        if launcher.poll() is None:
            launcher.kill()
        _kill([*pids.values(), *([controller] if controller else [])])
