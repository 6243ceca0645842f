"""launch/ on a real SLURM: the single-node cluster of .ci/slurm.sh (slurmctld + slurmd + munge on
this machine), jobs submitted through submitit by the real launchers.

- the tiny pre-training run as 1 node x 2 tasks completes; logs and checkpoints are where the
  launcher said;
- preempted (USR2, what SLURM sends and submitit handles) after its first checkpoint, the job
  is requeued, logs "resumed from step k" (k > 0) and ends at the same final step as the
  uninterrupted run;
- an impossible request (unknown partition, more tasks than the node has) is refused at
  submission with a clear message and leaves no run directory;
- a fine-tuning sweep goes out as ONE job array, every element's result is collected;
- launch/render.py --cluster slurm renders a synthetic corpus on a Ray cluster inside a SLURM
  job and leaves no Ray process behind (also when the job fails).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from c2p.cluster.raycluster import _processes_with_env
from c2p.cluster.slurm import slurm_state

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

TINY = REPO / "configs" / "pretrain" / "tiny.yaml"
STEPS, EVERY = 80, 10


def pretrain(env: dict, run_dir: Path, name: str, *argv: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "launch/pretrain.py", "--config", str(TINY), "--cluster", "slurm", "--nodes", "1", "--tasks-per-node", "2",
         "--time", "30", *argv, f"run.dir={run_dir}", f"run.name={name}", f"train.steps={STEPS}", f"checkpoint.every={EVERY}",
         "checkpoint.keep=2", "train.log_every=10"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )


def job_id_of(stdout: str) -> str:
    m = re.search(r"submitted job (\d+)", stdout)
    assert m, stdout
    return m.group(1)


def follow(env: dict, job: str, timeout: float = 400) -> subprocess.CompletedProcess:
    """``launch/pretrain.py --follow JOB``: a launcher that waits for a job submitted without --wait."""
    return subprocess.run([sys.executable, "launch/pretrain.py", "--follow", job], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def committed(run: Path) -> bool:
    """The run has a committed checkpoint."""
    return bool(list((run / "checkpoints").glob("step_*/c2p_commit.json")))


def wait_while_queued(job: str, ready, timeout: float = 300) -> None:
    """Until ``ready()`` holds; fails if the job left the queue first or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline and slurm_state(job) in ("PENDING", "RUNNING", "CONFIGURING", "UNKNOWN"), slurm_state(job)
        time.sleep(0.2)


def wait_gone_or_done(job_id: str, result: Path, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = slurm_state(job_id)
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "GONE") and (result.exists() or state != "COMPLETED"):
            return
        time.sleep(1)
    raise AssertionError(f"job {job_id} still {slurm_state(job_id)} after {timeout}s")


def final_metrics(run: Path) -> dict:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


@pytest.fixture(scope="module")
def shard_args(tiny_shards) -> list[str]:
    return [f"data.shards=[{tiny_shards}]", "data.imgfeat_tag=tiny"]


@pytest.fixture(scope="module")
def uninterrupted(slurm_cluster, shard_args, tmp_path_factory):
    """The tiny run on SLURM, 1 node x 2 tasks, waited for by the launcher (--wait)."""
    env = dict(os.environ, SLURM_CONF=slurm_cluster, OMP_NUM_THREADS="1")
    runs = tmp_path_factory.mktemp("slurm-runs")
    r = pretrain(env, runs, "straight", "--wait", *shard_args)
    return r, runs / "straight"


def test_pretrain_on_slurm_completes_where_the_launcher_said(uninterrupted):
    r, run = uninterrupted
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    job = job_id_of(out)
    assert f"run dir : {run}" in out and f"scancel {job}" in out and f"squeue -j {job}" in out
    log = Path(re.search(r"logs\s+: (\S+) \(rank 0 stdout\)", out).group(1))
    err = Path(re.search(r"follow\s+: tail -F (\S+)", out).group(1))
    assert log == run / "logs" / job / f"{job}_0_log.out" and log.is_file() and err.is_file()
    assert (run / "logs" / job / f"{job}_1_log.err").is_file()  # rank 1's own log
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["step"] == STEPS and summary["run_dir"] == str(run)
    assert (run / "checkpoints" / "latest").read_text() == f"step_{STEPS:08d}"
    assert (run / "export" / "depth_tower.safetensors").is_file() and (run / "config.yaml").is_file()
    assert "fresh start" in (run / "logs" / "train_rank0.log").read_text()
    assert json.loads((run / "checkpoints" / f"step_{STEPS:08d}" / "c2p_commit.json").read_text())["world_size"] == 2


def test_preempted_job_is_requeued_and_resumes(uninterrupted, slurm_env, shard_args, tmp_path):
    env = slurm_env
    r = pretrain(env, tmp_path, "preempted", *shard_args)  # --cluster slurm: returns after submission
    assert r.returncode == 0, r.stdout + r.stderr
    job, run = job_id_of(r.stdout), tmp_path / "preempted"
    wait_while_queued(job, lambda: committed(run))
    # What SLURM does before preempting a job (and what submitit's own _interrupt() sends).
    subprocess.run(["scancel", "--signal=USR2", job], env=env, check=True)
    result = run / "logs" / job / f"{job}_0_result.pkl"
    # A launcher that follows the job submitted without --wait: through the requeue to rank 0's result.
    followed = follow(env, job)
    assert followed.returncode == 0, followed.stdout[-3000:] + followed.stderr[-3000:]
    assert f"following job {job}" in followed.stdout and json.loads(followed.stdout.strip().splitlines()[-1])["step"] == STEPS
    wait_gone_or_done(job, result)
    err = (run / "logs" / job / f"{job}_0_log.err").read_text()
    assert "this job is preempted" in err and "Requeued job" in err, err[-3000:]
    resumed = [int(k) for k in re.findall(r"resumed from step (\d+)", (run / "logs" / "train_rank0.log").read_text())]
    assert len(resumed) == 1 and 0 < resumed[0] < STEPS and resumed[0] % EVERY == 0, resumed
    assert result.is_file()
    straight = uninterrupted[1]
    a, b = final_metrics(run), final_metrics(straight)
    assert a["step"] == b["step"] == STEPS
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == \
           [json.loads(line)["step"] for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert (run / "checkpoints" / "latest").read_text() == f"step_{STEPS:08d}"


def test_a_stopped_rank_has_the_job_requeued_and_it_resumes(slurm_env, shard_args, tmp_path):
    """Rank 1 stops (SIGSTOP) after the first committed checkpoint: rank 0's watchdog fires and asks
    SLURM to requeue the job (SLURM requeues a lost node's job, not a failed one); the job starts
    again, resumes from the last committed tag and finishes; a launcher following it gets rank 0's result."""
    r = pretrain(slurm_env, tmp_path, "stalled", *shard_args, "train.watchdog_s=20")  # returns after submission
    assert r.returncode == 0, r.stdout + r.stderr
    job, run = job_id_of(r.stdout), tmp_path / "stalled"
    beat = run / "heartbeat" / "rank_00001.json"
    wait_while_queued(job, lambda: committed(run) and beat.is_file())
    pid = json.loads(beat.read_text())["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        followed = follow(slurm_env, job)
    finally:
        for sig in (signal.SIGCONT, signal.SIGKILL):  # ended by SLURM's requeue already, unless the test failed
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    assert followed.returncode == 0, followed.stdout[-3000:] + followed.stderr[-3000:]
    assert json.loads(followed.stdout.strip().splitlines()[-1])["step"] == STEPS
    log = (run / "logs" / "train_rank0.log").read_text()
    assert "watchdog: rank 0 finished no optimizer step for" in log and f"rank 1 (pid {pid} on " in log, log[-3000:]
    assert f"requeued job {job} (restart 1 of at most 2)" in log, log[-3000:]
    resumed = [int(k) for k in re.findall(r"resumed from step (\d+)", log)]
    assert len(resumed) == 1 and 0 < resumed[0] < STEPS and resumed[0] % EVERY == 0, resumed
    assert (run / "checkpoints" / "latest").read_text() == f"step_{STEPS:08d}"


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--partition", "nosuchpartition"], "--partition 'nosuchpartition': unknown partition; this cluster has: debug"),
        (["--tasks-per-node", "4"], r"impossible request: 1 node\(s\) x 4 task\(s\)"),
        (["--cpus-per-task", "2"], r"impossible request: 1 node\(s\) x 2 task\(s\) x 2 CPU\(s\)"),
        (["--mem", "100000G"], "impossible request.*100000G"),
    ],
)
def test_impossible_request_is_refused_and_leaves_nothing(slurm_env, shard_args, tmp_path, argv, expected):
    env = slurm_env
    before = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True).stdout.split()
    r = pretrain(env, tmp_path / "runs", "refused", *argv, *shard_args, timeout=120)
    assert r.returncode == 2 and re.search(expected, r.stderr), r.stderr
    assert not (tmp_path / "runs").exists()
    after = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True).stdout.split()
    assert set(after) <= set(before) | {j for j in after if not j.isdigit()}  # nothing new was submitted


def test_following_a_job_slurm_does_not_know_is_refused(slurm_env):
    r = follow(slurm_env, "987654", timeout=60)
    assert r.returncode == 2 and "--follow 987654: SLURM does not know this job" in r.stderr, r.stderr


def test_slurm_refuses_what_sinfo_cannot_see(slurm_env, tmp_path):
    """The last word is SLURM's own (sbatch --test-only): an unknown QOS is named."""
    from c2p.cluster import ClusterOptions, LaunchError, check_request

    with pytest.raises(LaunchError, match="SLURM refuses the request"):
        check_request(ClusterOptions(cluster="slurm", sbatch={"gres": "gpu:nosuchgpu:1"}))


def test_finetune_sweep_is_one_job_array(uninterrupted, slurm_env, tmp_path, capsys):
    """DOWNSTREAM's launch/finetune.py on SLURM, with the depth tower this module pre-trained:
    K=1 x seeds {0, 1} go out as one array; each element's results.json is collected."""
    from c2p.cli.finetune import main as finetune_main
    from c2p.corpora.synthetic import SYNTHETIC_CLASSES, write_synthetic

    tower = uninterrupted[1] / "export" / "depth_tower.safetensors"
    root = write_synthetic(tmp_path / "corpus", layout="shapenet", per_class=2, seed=0, test_per_class=1, classes=SYNTHETIC_CLASSES[:4])
    rc = finetune_main(["--cluster", "slurm", "--task", "fewshot", "--shots", "1", "--seed", "0", "1", "--time", "10",
                        "--config", str(REPO / "configs" / "downstream" / "fewshot_tiny.yaml"), "--root", str(root),
                        "--depth-tower", str(tower), f"run.dir={tmp_path / 'runs'}", "finetune.epochs=2", "data.points=256"])
    out = capsys.readouterr().out
    assert rc == 0, out
    array = re.search(r"submitted job array (\d+) with 2 element\(s\)", out)
    assert array, out
    sweep = tmp_path / "runs" / "fewshot-tiny" / "eval" / "fewshot"
    folders = {p.name for p in (sweep / "logs").iterdir() if p.is_dir()}
    assert {f"{array.group(1)}_0", f"{array.group(1)}_1"} <= folders  # one log folder per element
    assert {f.split("_")[0] for f in folders} == {array.group(1)}  # ... all of ONE array job
    results = sorted(sweep.glob("k1/seed*/results.json"))
    assert [p.parent.name for p in results] == ["seed0", "seed1"]


def _leftovers(job_id: str, env: dict) -> list[int]:
    """Processes still carrying this job's Ray cluster token, or its SLURM job id, in their
    environment (every process the job started inherits both, Ray's re-parented daemons too),
    once SLURM says the job has ended (its own processes exit a moment after the result)."""
    deadline = time.monotonic() + 120
    while slurm_state(job_id) in ("RUNNING", "COMPLETING", "CONFIGURING", "PENDING", "UNKNOWN") and time.monotonic() < deadline:
        time.sleep(0.5)
    needle = f"SLURM_JOB_ID={job_id}".encode()
    mine = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and needle in (p / "environ").read_bytes().split(b"\0"):
                mine.append(int(p.name))
        except OSError:
            continue
    return mine + [pid for rank in range(2) for pid in _processes_with_env(f"{job_id}-{rank}")]


def test_render_through_ray_inside_slurm_leaves_no_ray_process(slurm_env, tmp_path):
    from c2p.corpora.synthetic import SYNTHETIC_CLASSES, write_synthetic

    env = slurm_env
    root = write_synthetic(tmp_path / "corpus", layout="shapenet", per_class=1, seed=0, classes=SYNTHETIC_CLASSES[:3])
    out = tmp_path / "shards"
    common = [sys.executable, "launch/render.py", "--cluster", "slurm", "--time", "20", "--cpus-per-task", "2",
              "--config", str(REPO / "configs" / "render" / "synthetic.yaml"), "--json"]
    small = ["views.image_size=32", "job.points=256", "job.previews=0", "views.depth_png=false", "job.shard_size=2"]
    r = subprocess.run([*common, "--root", str(root), "--out", str(out), *small], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["samples"] == 3 and summary["shards_rendered"] == 2 and not summary["shards_failed"]
    assert sorted(p.name for p in out.glob("shard-*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    job = job_id_of(r.stdout)
    head = tmp_path / "shards.slurm" / "ray" / job / "head.json"
    assert oct(head.stat().st_mode & 0o777) == "0o600"  # it holds the cluster's auth token
    assert "ray start" not in r.stdout and _leftovers(job, env) == []

    # A render that fails inside the job (an empty corpus root): the job fails, Ray is still stopped.
    # Called through the library function so that the failure happens inside the job whatever
    # checks launch/render.py makes before submitting.
    from c2p.cluster import ClusterOptions, JobFailedError, run_ray_in_slurm
    from c2p.config import load_config
    from c2p.config.render import RenderJobConfig

    (tmp_path / "empty").mkdir()
    cfg = load_config(RenderJobConfig, REPO / "configs" / "render" / "synthetic.yaml",
                      [f"corpus.root={tmp_path / 'empty'}", f"out={tmp_path / 'shards2'}", *small])
    with pytest.raises(JobFailedError, match="CorpusError") as e:
        run_ray_in_slurm("c2p.shards.job:run_render_job", cfg, ClusterOptions(cluster="slurm", time=20), tmp_path / "failed")
    job = re.search(r"job (\d+):", str(e.value)).group(1)
    assert _leftovers(job, env) == []


RAY_TARGET = '''
def spread(cfg, address):
    import os
    import ray
    ray.init(address=address, log_to_driver=False)
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        @ray.remote(num_cpus=1)
        def where():
            return os.environ.get("C2P_RAY_CLUSTER")
        nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        pinned = [where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote() for n in nodes]
        return {"nodes": len(nodes), "where": sorted(ray.get(pinned))}
    finally:
        ray.shutdown()
'''


def test_ray_head_and_worker_tasks_form_one_cluster(slurm_env, tmp_path, monkeypatch):
    """Two tasks as two 'nodes' (one machine here): rank 0 runs the head, rank 1 a worker that
    joins it with the head's address and token; work lands on both; nothing is left behind."""
    from c2p.cluster import ClusterOptions, RayClusterTask, collect, submit

    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "ray_spread.py").write_text(RAY_TARGET)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "lib"), os.environ.get("PYTHONPATH", "")]))
    job = submit(RayClusterTask("ray_spread:spread", {}, tmp_path / "ray", cpus_per_node=1),
                 ClusterOptions(cluster="slurm", tasks_per_node=2, time=10), tmp_path / "run")
    result = collect([job], timeout_s=300)[0]
    assert result == {"nodes": 2, "where": [f"{job.job_id}-0", f"{job.job_id}-1"]}
    assert _leftovers(job.job_id, slurm_env) == []
