"""Ray inside SLURM: a Ray head on the job's first node, a worker on every other node, the
function called on the head with the cluster's address, and every Ray process stopped
afterwards, also when the function raises.

No ``ray`` import here: the CLI (``ray start``) does the work, so this module stays light and
Ray stays in the rooms that use it (:mod:`c2p.shards`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from c2p.cluster.env import free_port
from c2p.cluster.errors import LaunchError
from c2p.cluster.options import ClusterOptions
from c2p.cluster.slurm import node_address
from c2p.cluster.submit import collect, describe_job, submit
from c2p.cluster.task import resolve_target
from c2p.fileio import atomic_write_bytes

__all__ = ["RayClusterTask", "run_ray_in_slurm", "stop_ray_processes"]


# The job's own interpreter, not whatever `ray` is first on PATH (a shim, another venv).
_RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]
# Ray's daemons listen on every interface of the node: free ports are probed the same way.
_ANY_HOST = ""


def _processes_with_env(token: str) -> list[int]:
    """Pids of processes whose environment holds ``C2P_RAY_CLUSTER=<token>`` (ours, any depth)."""
    needle = f"C2P_RAY_CLUSTER={token}".encode()
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            if needle in (p / "environ").read_bytes().split(b"\0"):
                pids.append(int(p.name))
        except (OSError, PermissionError):
            continue
    return pids


def stop_ray_processes(token: str, grace_s: float = 10.0) -> int:
    """Stop every process started for Ray cluster ``token`` (TERM, then KILL after ``grace_s``).

    Ray daemons re-parent themselves and rename their workers (``ray::IDLE``), so neither the
    process tree nor command lines find them all; the environment variable we set on
    ``ray start`` is inherited by every one of them. Returns how many were stopped.
    """
    pids = _processes_with_env(token)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _processes_with_env(token):
        time.sleep(0.2)
    for pid in _processes_with_env(token):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


class RayClusterTask:
    """The callable of a Ray-in-SLURM job (one task per node).

    Rank 0 starts a Ray head, publishes its address in ``<state_dir>/<job>/head.json``, waits
    until every node's worker joined, calls ``target(cfg, address=...)`` and, in ``finally``,
    writes ``done`` and stops its Ray processes. Other ranks start a Ray worker joined to the
    head, wait for ``done`` (or the head's task to vanish) and stop theirs. No ``ray`` import
    here: the CLI (``ray start``) does the work, so this module stays light.
    """

    def __init__(self, target: str, cfg: Any, state_dir: str | Path, *, cpus_per_node: int | None = None, join_timeout_s: float = 300.0) -> None:
        self.target, self.cfg, self.state_dir = target, cfg, str(state_dir)
        self.cpus_per_node, self.join_timeout_s = cpus_per_node, join_timeout_s

    def __repr__(self) -> str:
        return f"RayClusterTask({self.target})"

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        # The render job skips finished shards on a re-run, so a fresh start is a resume.
        import submitit

        return submitit.helpers.DelayedSubmission(type(self)(self.target, self.cfg, self.state_dir, cpus_per_node=self.cpus_per_node, join_timeout_s=self.join_timeout_s))

    def _ray_start(self, args: list[str], token: str) -> subprocess.Popen:
        cpus = self.cpus_per_node or int(os.environ.get("SLURM_CPUS_ON_NODE", "0") or 0) or os.cpu_count() or 1
        temp = Path(tempfile.gettempdir()) / f"c2pray-{token}"  # short: Ray's socket paths must fit 107 bytes
        cmd = [
            *_RAY_CLI, "start", "--block", f"--num-cpus={cpus}", f"--temp-dir={temp}",
            "--disable-usage-stats",
            f"--dashboard-agent-listen-port={free_port(_ANY_HOST)}", f"--dashboard-agent-grpc-port={free_port(_ANY_HOST)}",
            f"--metrics-export-port={free_port(_ANY_HOST)}", f"--runtime-env-agent-port={free_port(_ANY_HOST)}", *args,
        ]
        env = dict(os.environ, C2P_RAY_CLUSTER=token, RAY_USAGE_STATS_ENABLED="0")
        return subprocess.Popen(cmd, env=env, start_new_session=True)

    @staticmethod
    def _use_auth_token(secret: str) -> None:
        """Token authentication with a per-job secret, for ``ray start``, ``ray status`` and the
        function's ``ray.init`` alike (all read these variables). Explicit, because Ray >= 2.5x
        switches token auth on by itself when ``~/.ray/auth_token`` exists, and then a client
        without that same token is refused."""
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secret

    def __call__(self) -> Any:
        import submitit

        job = submitit.JobEnvironment()
        rank, ntasks = job.global_rank, job.num_tasks
        state = Path(self.state_dir) / str(job.job_id)
        state.mkdir(parents=True, exist_ok=True)
        token = f"{job.job_id}-{rank}"
        # Ray wants an IP; SLURM's NodeAddr for this node, resolved only if it is a name.
        host_ip = socket.gethostbyname(node_address(job.hostname))
        proc = None
        try:
            if rank == 0:
                port, secret = free_port(_ANY_HOST), secrets.token_hex(32)
                self._use_auth_token(secret)
                head_args = ["--head", f"--port={port}", "--include-dashboard=false", f"--ray-client-server-port={free_port(_ANY_HOST)}"]
                proc = self._ray_start([*head_args, f"--node-ip-address={host_ip}"], token)
                address = f"{host_ip}:{port}"
                self._wait_port(host_ip, port, proc)
                # head.json holds the cluster's secret: readable by the owner only.
                atomic_write_bytes(state / "head.json", json.dumps({"address": address, "token": secret}).encode(), mode=0o600)
                self._wait_nodes(address, ntasks, proc)
                return resolve_target(self.target)(self.cfg, address=address)
            head = self._wait_file(state / "head.json")
            info = json.loads(head.read_text())
            address = info["address"]
            self._use_auth_token(info["token"])
            proc = self._ray_start([f"--address={address}", f"--node-ip-address={host_ip}"], token)
            while not (state / "done").exists():
                if proc.poll() is not None:
                    raise LaunchError(f"ray worker on {job.hostname} exited with {proc.returncode} before the job was done")
                time.sleep(1.0)
            return None
        finally:
            if rank == 0:
                (state / "done").touch()
            if proc is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:  # `ray start --block` drains for up to 30 s on TERM; the work is done, so do not wait for that
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    pass
            stop_ray_processes(token, grace_s=2.0)
            shutil.rmtree(Path(tempfile.gettempdir()) / f"c2pray-{token}", ignore_errors=True)

    def _wait_file(self, path: Path) -> Path:
        deadline = time.monotonic() + self.join_timeout_s
        while not path.exists():
            if time.monotonic() > deadline:
                raise LaunchError(f"{path} did not appear within {self.join_timeout_s:.0f}s: did the Ray head start?")
            time.sleep(0.5)
        return path

    def _wait_port(self, host: str, port: int, proc: subprocess.Popen) -> None:
        deadline = time.monotonic() + self.join_timeout_s
        while True:
            if proc.poll() is not None:
                raise LaunchError(f"ray start --head exited with {proc.returncode} (see the job's stderr)")
            try:
                with socket.create_connection((host, port), timeout=1.0):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise LaunchError(f"Ray head {host}:{port} not reachable within {self.join_timeout_s:.0f}s") from None
                time.sleep(0.5)

    def _wait_nodes(self, address: str, n: int, proc: subprocess.Popen) -> None:
        """Until ``ray status`` lists ``n`` active nodes (the head's raylet included)."""
        deadline = time.monotonic() + self.join_timeout_s
        while True:
            if proc.poll() is not None:
                raise LaunchError(f"ray start --head exited with {proc.returncode} while waiting for workers")
            r = subprocess.run([*_RAY_CLI, "status", f"--address={address}"], capture_output=True, text=True, timeout=120)
            active = r.stdout.split("Active:", 1)[1].split("Pending:", 1)[0] if "Active:" in r.stdout else ""
            if r.returncode == 0 and len(re.findall(r"node_[0-9a-f]+", active)) >= n:
                return
            if time.monotonic() > deadline:
                raise LaunchError(f"Ray cluster at {address}: fewer than {n} node(s) active after {self.join_timeout_s:.0f}s\n{r.stdout}{r.stderr}")
            time.sleep(1.0)


def run_ray_in_slurm(
    target: str,
    cfg: Any,
    opts: ClusterOptions,
    log_dir: str | Path,
    *,
    cpus_per_node: int | None = None,
    dry_run: bool = False,
    wait_for_result: bool = True,
    timeout_s: float | None = None,
    out: Any = None,
) -> Any:
    """Run ``target(cfg, address=<ray head>)`` on a Ray cluster inside one SLURM job.

    One task per node (``opts.tasks_per_node`` is forced to 1): Ray head on the first node,
    workers on the others; every Ray process is stopped when the function returns or raises.
    A node that fails takes its worker with it and nothing else (``--no-kill``): Ray retries
    the lost tasks on the nodes left, and the result is the head's (rank 0's).
    For ``launch/render.py --cluster slurm``::

        run_ray_in_slurm("c2p.shards.job:run_render_job", cfg, opts, log_dir)

    Returns the function's result (``wait_for_result``), else the Job.
    """
    out = out or sys.stdout
    # A lost node costs the Ray cluster a worker, not the job: Ray retries its tasks elsewhere.
    opts = dataclasses.replace(opts, tasks_per_node=1, keep_on_node_failure=True)
    if opts.cluster != "slurm":
        raise LaunchError("run_ray_in_slurm: expected --cluster slurm (locally, call the function with address=None)")
    log_dir = Path(log_dir).absolute()
    task = RayClusterTask(target, cfg, log_dir / "ray", cpus_per_node=cpus_per_node or opts.cpus_per_task)
    job = submit(task, opts, log_dir, config_text=None, log_subdir="logs", dry_run=dry_run, out=out)
    if job is None:
        return None
    print(describe_job(job, opts, log_dir), file=out, flush=True)
    return collect([job], timeout_s, first_rank_only=True)[0] if wait_for_result else job
