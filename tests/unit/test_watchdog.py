"""c2p.train.watchdog: heartbeat files, naming the stalled peer, and the exit of a rank that makes no progress."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from c2p.config.core import ConfigError, load_config
from c2p.config.pretrain import PretrainConfig
from c2p.train.watchdog import EXIT_STALLED, HEARTBEAT_DIR, Heartbeat, Watchdog, read_heartbeats, stalled_peers

REPO = Path(__file__).resolve().parents[2]


def test_stalled_peers_names_the_frozen_rank_then_the_rank_behind():
    now = 1000.0
    live = lambda r, step: Heartbeat(r, "h", 100 + r, step, now - 30, now - 1)  # noqa: E731
    frozen = Heartbeat(1, "h", 101, 7, now - 30, now - 25)  # its file was not rewritten: process stopped
    text = stalled_peers({0: live(0, 7), 1: frozen, 2: live(2, 7)}, me=0, now=now, poll_s=2)
    assert text == "rank 1 (pid 101 on h) stopped running 25s ago (frozen, dead or unreachable; last reported step 7)"
    text = stalled_peers({0: live(0, 8), 1: live(1, 8), 2: live(2, 7)}, me=0, now=now, poll_s=2)
    assert text == "rank 2 (pid 102 on h) is behind at step 7"
    assert stalled_peers({0: live(0, 7), 1: live(1, 7)}, me=0, now=now, poll_s=2) == ""  # nothing tells them apart


def test_heartbeat_file_written_while_running_and_removed_at_a_clean_end(tmp_path):
    with Watchdog(tmp_path, rank=1, world_size=2, timeout_s=0, step=5, poll_s=0.05) as dog:
        dog.beat(6)
        deadline = time.monotonic() + 10
        while read_heartbeats(tmp_path / HEARTBEAT_DIR, 2).get(1, None) is None or \
                read_heartbeats(tmp_path / HEARTBEAT_DIR, 2)[1].step != 6:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        beat = read_heartbeats(tmp_path / HEARTBEAT_DIR, 2)[1]
        assert (beat.rank, beat.pid, beat.step) == (1, os.getpid(), 6)
    assert read_heartbeats(tmp_path / HEARTBEAT_DIR, 2) == {}


def test_rank_without_progress_exits_75_naming_itself_its_step_and_the_frozen_peer(tmp_path):
    beats = tmp_path / HEARTBEAT_DIR
    beats.mkdir()
    now = time.time()
    (beats / "rank_00001.json").write_text(json.dumps(asdict(Heartbeat(1, "nodeB", 4321, 3, now - 60, now - 60))))
    script = ("import logging, time, sys\nfrom pathlib import Path\nfrom c2p.train.watchdog import Watchdog\n"
              "logging.basicConfig(stream=sys.stderr)\n"
              f"with Watchdog(Path({str(tmp_path)!r}), rank=0, world_size=2, timeout_s=1, step=3, poll_s=0.2,\n"
              "              on_stall=lambda: 'asked for a requeue'):\n"
              "    time.sleep(120)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=100,
                       env=dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"))
    assert r.returncode == EXIT_STALLED, r.stderr
    assert "watchdog: rank 0 finished no optimizer step for" in r.stderr and "after step 3" in r.stderr
    assert "rank 1 (pid 4321 on nodeB) stopped running" in r.stderr and "last reported step 3)" in r.stderr
    assert "watchdog: rank 0: asked for a requeue" in r.stderr  # on_stall ran on the way out, and was logged


def test_a_stalled_job_asks_slurm_for_a_requeue_within_its_budget():
    """c2p.cluster.slurm.requeue_this_job, what the pre-training watchdog calls: refused outside a SLURM batch
    job and once the job restarted ``budget`` times; else ``scontrol requeue``, whose failure (no job 0)
    is told, not raised. The requeue itself: tests/integration/test_slurm.py."""
    from c2p.cluster.slurm import requeue_this_job

    assert requeue_this_job(2, {}) == "not a SLURM batch job: not requeued"
    assert requeue_this_job(2, {"SLURM_JOB_ID": "7", "SUBMITIT_EXECUTOR": "local"}) == "not a SLURM batch job: not requeued"
    assert requeue_this_job(2, {"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "2"}) == \
        "job 7 not requeued: it restarted 2 time(s) already (train.watchdog_requeues = 2)"
    assert requeue_this_job(0, {"SLURM_JOB_ID": "7"}).startswith("job 7 not requeued: it restarted 0 time(s)")
    assert requeue_this_job(2, {"SLURM_JOB_ID": "0", "SLURM_RESTART_COUNT": "1"}).startswith("job 0 not requeued: ")


def test_watchdog_and_collective_timeout_keys_are_validated():
    from c2p.train.engine import collective_timeout

    cfg = load_config(PretrainConfig, None, ["data.shards=[x]", "train.watchdog_s=20"])
    assert collective_timeout(cfg).total_seconds() == 40
    off = load_config(PretrainConfig, None, ["data.shards=[x]", "train.watchdog_s=0"])
    assert collective_timeout(off).total_seconds() == 1800
    for overrides, key in ([["train.watchdog_s=30", "train.collective_timeout_s=20"], "train.collective_timeout_s"],
                           [["train.watchdog_s=0.5"], "train.watchdog_s"]):
        try:
            load_config(PretrainConfig, None, ["data.shards=[x]", *overrides])
        except ConfigError as e:
            assert e.key == key
        else:
            raise AssertionError(f"{overrides} accepted")
