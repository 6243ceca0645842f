"""launch/ across hosts: the cluster of .ci/cluster.sh, two hosts c2p-h1 and c2p-h2 made of network +
UTS namespaces on a bridge (own addresses, own hostnames, one slurmd each, a shared filesystem), the
controller on a third namespace. Names resolve nowhere (no /etc/hosts entries): jobs meet at the
addresses slurm.conf gives (NodeAddr).

- the tiny pre-training run as 2 nodes x 1 task: DeepSpeed over gloo with one rank on each host
  (the rendezvous at host 1's address: loopback would not reach across namespaces), checkpoints
  committed at world size 2, the run finishes;
- host 2 dies mid pre-training (``--nodes 1-2``): SLURM ends and requeues the job, which resumes on
  host 1 alone at world size 1 from the last committed checkpoint and trains on to the target step;
- host 2 dies while a fine-tuning job array runs an element there: SLURM requeues that element,
  which runs again on host 1; every element's results are collected;
- launch/render.py --cluster slurm --nodes 2: Ray head on host 1, worker on host 2, shard tasks
  rendered on both;
- host 2 dies mid-render (every process in its namespace SIGKILLed, its link down): the job
  finishes on host 1 with every shard once, byte-identical to the uninterrupted render;
- ``.ci/cluster.sh down`` leaves no namespace, link, daemon or Ray process behind.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hostcluster import cluster_sh, cluster_up, namespace_pids

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

TINY = REPO / "configs" / "pretrain" / "tiny.yaml"
HOSTS = ["c2p-h1", "c2p-h2"]
# Ray notices a dead node within seconds, not minutes (gRPC keepalive defaults to 5 min on a link
# that went dark without a reset): the Ray side of a short SlurmdTimeout.
RAY_FAST_FAILURE = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                    "RAY_health_check_failure_threshold": "3", "RAY_grpc_client_keepalive_time_ms": "2000",
                    "RAY_grpc_client_keepalive_timeout_ms": "2000"}


def job_id_of(stdout: str) -> str:
    m = re.search(r"submitted job (\d+)", stdout)
    assert m, stdout
    return m.group(1)


def comms(host: str) -> list[str]:
    """The command names of the processes running on ``host``."""
    names = []
    for pid in namespace_pids(host):
        try:
            names.append(Path(f"/proc/{pid}/comm").read_text().strip())
        except OSError:  # ended meanwhile
            continue
    return names


def running(pid: int) -> bool:
    """The process exists and is not a zombie (killed, waiting for its new parent to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_while_running(proc: subprocess.Popen, ready, timeout_s: float) -> None:
    """Until ``ready()`` holds; fails if the launcher ``proc`` ended first or ``timeout_s`` passed."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)


def kill_host_2_and_finish(proc: subprocess.Popen, timeout_s: float) -> str:
    """Host 2 dies (``.ci/cluster.sh kill-host``); the launcher ``proc`` must still end with 0. Its stdout."""
    killed = cluster_sh("kill-host", "c2p-h2")
    assert killed.returncode == 0, killed.stderr
    stdout, stderr = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return stdout


def wait_both_idle(env: dict, timeout_s: float = 120) -> None:
    """Both hosts idle: a job submitted now gets both. Failing, it shows the states seen, the
    queue and what runs on each host."""
    t0 = time.monotonic()
    seen: list[tuple[float, list[str]]] = []
    while True:
        states = [node_state(env, h) for h in HOSTS]
        if not seen or seen[-1][1] != states:
            seen.append((round(time.monotonic() - t0, 1), states))
        if all(s == "idle" for s in states):
            return
        if time.monotonic() - t0 > timeout_s:
            queue = subprocess.run(["squeue", "-t", "all", "-o", "%i %j %T %M %R"], env=env, capture_output=True, text=True).stdout
            ps = {h: subprocess.run(["ps", "-o", "pid,stat,etime,args", "-p", ",".join(map(str, namespace_pids(h)))],
                                    capture_output=True, text=True).stdout for h in HOSTS}
            raise AssertionError(f"hosts not idle after {timeout_s:.0f} s (seconds, states): {seen}\n{queue}"
                                 + "".join(f"\n{h}:\n{ps[h]}" for h in HOSTS))
        time.sleep(0.5)


def test_pretrain_ranks_on_two_hosts_rendezvous_and_finish(multihost_env, tiny_shards, tmp_path):
    steps = 20
    r = subprocess.run(
        [sys.executable, "launch/pretrain.py", "--config", str(TINY), "--cluster", "slurm", "--nodes", "2",
         "--tasks-per-node", "1", "--time", "10", "--wait", f"data.shards=[{tiny_shards}]", "data.imgfeat_tag=tiny",
         f"run.dir={tmp_path}", "run.name=twohosts", f"train.steps={steps}", "checkpoint.every=10", "train.log_every=10",
         "train.watchdog_s=120"],
        cwd=REPO, env=multihost_env, capture_output=True, text=True, timeout=400,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = tmp_path / "twohosts"
    assert json.loads(r.stdout.strip().splitlines()[-1])["step"] == steps
    hosts = {}
    for rank in range(2):
        m = re.search(rf"rank {rank}/2 on host (\S+),", (run / "logs" / f"train_rank{rank}.log").read_text())
        assert m, f"rank {rank}'s log names no host"
        hosts[rank] = m.group(1)
    assert hosts == {0: "c2p-h1", 1: "c2p-h2"}
    for step in (10, 20):
        commit = json.loads((run / "checkpoints" / f"step_{step:08d}" / "c2p_commit.json").read_text())
        assert commit["world_size"] == 2 and commit["step"] == step
    assert (run / "checkpoints" / "latest").read_text() == f"step_{steps:08d}"


def metric_steps(run: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError):  # not yet written, or a line being written
        return []


def test_pretraining_resumes_on_the_host_left_when_host_2_dies(multihost_env, tiny_shards, tmp_path):
    """Host 2 dies between two checkpoints: SLURM sees its node go (SlurmdTimeout=6), ends the job and
    requeues it; asked for with ``--nodes 1-2`` (submitted with ``--no-wait``, then followed by
    ``--follow JOB``, which reads the request from the job's comment) it starts again on host 1
    alone, resumes from the last committed tag at world size 1 (the universal-checkpoint path)
    and trains on to the target step."""
    steps, every = 200, 10
    wait_both_idle(multihost_env)  # the job asks for both hosts: it starts on two
    submitted = subprocess.run(
        [sys.executable, "launch/pretrain.py", "--config", str(TINY), "--cluster", "slurm", "--nodes", "1-2",
         "--tasks-per-node", "1", "--time", "10", "--no-wait", f"data.shards=[{tiny_shards}]", "data.imgfeat_tag=tiny",
         f"run.dir={tmp_path}", "run.name=lost", f"train.steps={steps}", f"checkpoint.every={every}", "checkpoint.keep=2",
         "train.log_every=1", "train.watchdog_s=120", "schedule.name=constant",
         "loss.global_negatives=true"],
        cwd=REPO, env=multihost_env, capture_output=True, text=True, timeout=120)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    job = re.search(r"submitted job (\d+)", submitted.stdout).group(1)
    assert f"c2p-pretrain --follow {job}" in submitted.stdout
    # Submitted without --wait: the launcher that shrinks it after the lost host is one that follows it.
    proc = subprocess.Popen([sys.executable, "launch/pretrain.py", "--follow", job], cwd=REPO, env=multihost_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "lost"
    # Host 2 dies once two checkpoints are committed at world size 2 and training went on past them.
    wait_while_running(proc, lambda: (run / "checkpoints" / "latest").is_file()
                       and (metric_steps(run) or [{"step": 0}])[-1]["step"] >= 2 * every + 3, 300)
    before_kill = metric_steps(run)
    stdout = kill_host_2_and_finish(proc, 400)
    assert json.loads(stdout.strip().splitlines()[-1])["step"] == steps
    log = (run / "logs" / "train_rank0.log").read_text()
    m = re.search(r"resumed from step (\d+) \(\S+, universal format\) at world size 1 on c2p-h1 \(SLURM job \d+, restart 1\); "
                  r"step_\d+ was saved at world size 2 on c2p-h1, c2p-h2; no longer in the job: c2p-h2", log)
    assert m, log[-3000:]
    resumed = int(m.group(1))
    assert 2 * every <= resumed <= before_kill[-1]["step"] and resumed % every == 0
    commit = json.loads((run / "checkpoints" / f"step_{steps:08d}" / "c2p_commit.json").read_text())
    assert commit["world_size"] == 1 and commit["hosts"] == ["c2p-h1"]
    # The curve goes on where it was: the losses after the resume are those of a trained model, not the initial ones
    # (over the global batch of 16 at either world size: global negatives, so the two sizes compare).
    records = metric_steps(run)
    first = [r["loss"] for r in records[:3]]
    after = [r["loss"] for r in records if resumed < r["step"] <= resumed + 3][-3:]
    before = [r["loss"] for r in before_kill if resumed - 3 < r["step"] <= resumed]
    assert len(after) == 3 and len(before) == 3, records
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert abs(mean(after) - mean(before)) < abs(mean(after) - mean(first)), (first, before, after)


def test_finetune_array_element_on_the_lost_host_runs_again_on_the_other(multihost_env, tmp_path):
    """K=1 x seeds {0, 1} as one array, an element per host (2 CPUs each: a whole host); host 2 dies
    while its element runs: SLURM requeues that element (``--requeue``) and it runs on host 1."""
    from safetensors.torch import save_file

    from c2p.corpora.synthetic import SYNTHETIC_CLASSES, write_synthetic
    from c2p.models.clip import create_clip

    tower = tmp_path / "depth_tower.safetensors"  # CLIP's image tower: what a depth tower starts from
    save_file({k: v.contiguous() for k, v in create_clip("c2p-tiny").visual.state_dict().items()}, str(tower))
    root = write_synthetic(tmp_path / "corpus", layout="shapenet", per_class=2, seed=0, test_per_class=1,
                           classes=SYNTHETIC_CLASSES[:4])
    wait_both_idle(multihost_env)
    proc = subprocess.Popen(
        [sys.executable, "launch/finetune.py", "--cluster", "slurm", "--task", "fewshot", "--shots", "1", "--seed", "0", "1",
         "--time", "10", "--cpus-per-task", "2", "--config", str(REPO / "configs" / "downstream" / "fewshot_tiny.yaml"),
         "--root", str(root), "--depth-tower", str(tower), f"run.dir={tmp_path / 'runs'}", "finetune.epochs=2",
         "data.points=256"],
        cwd=REPO, env=multihost_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sweep = tmp_path / "runs" / "fewshot-tiny" / "eval" / "fewshot"

    def starts() -> dict[str, list[str]]:
        """Array element -> the hosts it started on, from submitit's log (appended to across requeues)."""
        return {log.parent.name: re.findall(r"Starting with JobEnvironment\(job_id=\S+, hostname=([\w-]+)", log.read_text())
                for log in sweep.glob("logs/*/*_0_log.out")}

    wait_while_running(proc, lambda: ["c2p-h2"] in starts().values(), 120)  # an element started on host 2: it dies under it
    kill_host_2_and_finish(proc, 300)
    assert [p.parent.name for p in sorted(sweep.glob("k1/seed*/results.json"))] == ["seed0", "seed1"]
    assert sorted(starts().values()) == [["c2p-h1"], ["c2p-h2", "c2p-h1"]], starts()  # requeued, then on host 1


def render(env: dict, root: Path, out: Path, *, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    cmd = [sys.executable, "launch/render.py", "--cluster", "slurm", "--nodes", "2", "--time", "20", "--cpus-per-task", "2",
           "--config", str(REPO / "configs" / "render" / "synthetic.yaml"), "--json", "--root", str(root), "--out", str(out),
           "views.image_size=32", "job.points=256", "job.previews=0", "views.depth_png=false", "job.shard_size=1"]
    if wait:
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=500)
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def summary_of(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard-*.tar"))}


def keys_of(out: Path) -> list[str]:
    import tarfile

    keys = []
    for tar in sorted(out.glob("shard-*.tar")):
        with tarfile.open(tar) as t:
            keys += sorted({m.name.split(".", 1)[0] for m in t.getmembers()})
    return keys


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from c2p.corpora.synthetic import SYNTHETIC_CLASSES, write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("mh-corpus") / "c", layout="shapenet", per_class=3, seed=0,
                           classes=SYNTHETIC_CLASSES[:4])


@pytest.fixture(scope="module")
def uninterrupted_render(multihost_cluster, corpus, tmp_path_factory):
    """12 shards of one object each over both hosts, nothing killed: the reference render."""
    out = tmp_path_factory.mktemp("mh-render") / "shards"
    cluster_up(2)
    r = render(dict(os.environ, SLURM_CONF=multihost_cluster, OMP_NUM_THREADS="1"), corpus, out)
    return r, out


def test_render_spreads_shard_tasks_over_both_hosts(uninterrupted_render):
    r, out = uninterrupted_render
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = summary_of(r.stdout)
    assert summary["shards_rendered"] == summary["shards"] == 12 and not summary["shards_failed"]
    by_host = summary["shards_by_host"]
    assert set(by_host) == set(HOSTS) and sum(by_host.values()) == 12, by_host
    # The job's Ray processes are gone from both hosts: only each host's slurmd is left there.
    state = Path(os.environ.get("C2P_CLUSTER_DIR", "/tmp/c2p-cluster"))
    deadline = time.monotonic() + 60
    for h in HOSTS:
        slurmd = int((state / f"slurmd-{h}.pid").read_text())
        while namespace_pids(h) != [slurmd]:
            assert time.monotonic() < deadline, {p: Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in namespace_pids(h)}
            time.sleep(0.5)


def test_render_finishes_on_the_host_left_when_host_2_dies(uninterrupted_render, multihost_env, corpus, tmp_path):
    env = dict(multihost_env, **RAY_FAST_FAILURE)
    out = tmp_path / "shards"
    proc = render(env, corpus, out, wait=False)
    # Host 2 dies once the job is under way: shards done, and a shard task running on host 2.
    wait_while_running(proc, lambda: len(list(out.glob("parts/*.json"))) >= 2 and "ray::shard_task" in comms("c2p-h2"), 300)
    stdout = kill_host_2_and_finish(proc, 400)
    summary = summary_of(stdout)
    assert summary["samples"] == 12 and not summary["shards_failed"]
    reference = uninterrupted_render[1]
    assert shard_bytes(out) == shard_bytes(reference)  # every shard once, byte for byte
    keys = keys_of(out)
    assert len(keys) == len(set(keys)) == 12
    assert not list(out.glob("*.tmp*")) and not namespace_pids("c2p-h2")
    deadline = time.monotonic() + 120  # SLURM sees the host go too (SlurmdTimeout=6 in the test cluster)
    while not (state := node_state(env, "c2p-h2")).startswith("down"):
        assert time.monotonic() < deadline, state
        time.sleep(1)


def node_state(env: dict, host: str) -> str:
    """The controller's state of ``host``, lower case: idle, mixed, allocated, down+not_responding, ...

    From ``scontrol show node``, not ``sinfo``: after a two-host job had ended, sinfo (slurm-wlm
    22.05) went on answering "mixed" for minutes in one pytest run of three, while scontrol
    said State=IDLE, CPUAlloc=0 and the queue was empty."""
    from c2p.cluster.elastic import parse_job  # scontrol's one-line Key=Value form, nodes as jobs

    r = subprocess.run(["scontrol", "show", "node", "-o", host], env=env, capture_output=True, text=True, timeout=60)
    state = parse_job(r.stdout).get("State") if r.returncode == 0 else None
    return state.lower() if state else f"? (scontrol exit {r.returncode}: {r.stderr.strip()[:200]})"


def test_down_leaves_nothing_behind(multihost_env, corpus, tmp_path):
    """A render job is running on both hosts (Ray head, worker, shard tasks) when the cluster is
    taken down: afterwards no namespace, link, daemon or Ray process of the cluster remains."""
    proc = render(multihost_env, corpus, tmp_path / "shards", wait=False)
    try:
        wait_while_running(proc, lambda: all("raylet" in comms(h) for h in HOSTS), 300)
        state = Path(multihost_env["SLURM_CONF"]).parent
        pids = [int((state / f).read_text()) for f in ["slurmctld.pid", *(f"slurmd-{h}.pid" for h in HOSTS)]]
        pids += [p for h in ["c2p-ctl", *HOSTS] for p in namespace_pids(h)]
        assert len(pids) > 6
        r = cluster_sh("down")
    finally:
        proc.kill()  # the launcher, waiting for a job whose cluster is gone
        proc.communicate()
    assert r.returncode == 0, r.stderr
    assert [p for p in pids if running(p)] == []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert not re.search(r"^c2p-(ctl|h\d)\b", netns, flags=re.M), netns
    assert "c2p-br0" not in links and not re.search(r": c2p-v", links), links
    assert cluster_sh("status").returncode == 1
    assert cluster_sh("down").returncode == 0  # idempotent
