"""The log line of a resumed run (c2p.train.placement): which host was lost, from which step,
at which world size."""

from __future__ import annotations

from c2p.train.placement import describe_resume, job_hosts

META = {"tag": "step_00000010", "step": 10, "world_size": 2, "hosts": ["c2p-h1", "c2p-h2"]}


def test_a_lost_host_is_named_with_both_world_sizes(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert describe_resume(META, 1, ["c2p-h1"]) == (
        "resumed from step 10 at world size 1 on c2p-h1 (SLURM job 7, restart 1); step_00000010 was saved at "
        "world size 2 on c2p-h1, c2p-h2; no longer in the job: c2p-h2")


def test_the_same_placement_says_only_where(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert describe_resume(META, 2, ["c2p-h2", "c2p-h1"]) == "resumed from step 10 at world size 2 on c2p-h2, c2p-h1"
    # a marker written before hosts were recorded: the world sizes still tell
    old = {k: v for k, v in META.items() if k != "hosts"}
    assert describe_resume(old, 4, ["a", "a", "b", "b"]).endswith("on a, b; step_00000010 was saved at world size 2")
    assert describe_resume(META, 2, ["c2p-h1", "c2p-h3"]).endswith("no longer in the job: c2p-h2; new in the job: c2p-h3")
    assert describe_resume(META, 2, [], "ckpt/step_00000010") == ("resumed from step 10 (ckpt/step_00000010) at world size 2; "
                                                                  "step_00000010 was saved at world size 2 on c2p-h1, c2p-h2")


def test_job_hosts_without_a_process_group_is_this_host():
    import socket

    assert job_hosts() == [socket.gethostname()]
