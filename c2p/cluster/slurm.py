"""SLURM through submitit: executor parameters, the sbatch script, what ``sinfo``/``squeue`` say,
and the checks a request must pass before anything is submitted.

The parsers (:func:`parse_sinfo`, :func:`parse_squeue_state`) are pure functions of the
commands' text, so they are tested on canned output; :func:`partitions` and
:func:`slurm_state` run the commands. Job state is read with ``squeue`` rather than through
submitit's ``sacct`` watcher because a cluster without an accounting database (the local
SLURM of a single machine, many small sites) has no ``sacct``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from c2p.cluster.errors import LaunchError
from c2p.cluster.options import ClusterOptions, mem_mb

__all__ = ["TERMINAL_STATES", "slurm_parameters", "make_executor", "sbatch_script", "parse_sinfo", "partitions",
           "check_request", "run_command", "parse_squeue_state", "slurm_state", "parse_node_addr", "node_address"]

# Job states after which a job never runs again (squeue's %T).
TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "BOOT_FAIL", "OUT_OF_MEMORY",
                             "DEADLINE", "PREEMPTED", "SPECIAL_EXIT", "REVOKED"})


def slurm_parameters(opts: ClusterOptions, *, array: bool = False) -> dict[str, Any]:
    """``opts`` as :class:`submitit.SlurmExecutor` parameters."""
    extra: dict[str, Any] = {"requeue": True}
    if opts.mem:
        extra["mem"] = opts.mem  # as given (submitit's own `mem` wants GB as a number)
    if opts.keep_on_node_failure:
        extra["no-kill"] = True
    extra.update(opts.sbatch)
    params: dict[str, Any] = {
        "job_name": opts.job_name,
        "time": opts.time,
        "nodes": opts.nodes,
        "ntasks_per_node": opts.tasks_per_node,
        "signal_delay_s": opts.signal_delay_s,
        "additional_parameters": extra,
        # One rank dying (a crash, not a requeue) ends the step: the others would otherwise
        # wait in a collective, or for a Ray head that is gone, until the time limit. A job that
        # survives a lost node keeps its step going on the nodes left instead (--no-kill).
        "srun_args": ["--no-kill"] if opts.keep_on_node_failure else ["--kill-on-bad-exit=1"],
    }
    for name in ("partition", "account", "qos", "constraint", "cpus_per_task"):
        if getattr(opts, name) is not None:
            params[name] = getattr(opts, name)
    if opts.min_nodes is not None:  # submitted for its largest size; shrunk when stranded (c2p.cluster.elastic)
        from c2p.cluster.elastic import elastic_comment, task_count_setup

        params["setup"] = task_count_setup(opts)
        extra.setdefault("comment", elastic_comment(opts))  # for a launcher that follows the job later
    if opts.gpus_per_node:
        params["gpus_per_node"] = opts.gpus_per_node
    if opts.exclusive:
        params["exclusive"] = True
    if array:
        params["array_parallelism"] = opts.array_parallelism
    return params


def make_executor(opts: ClusterOptions, folder: str | Path, *, array: bool = False) -> Any:
    """A submitit executor for ``opts`` writing its logs/pickles into ``folder`` (may hold ``%j``)."""
    import submitit

    if opts.cluster == "slurm":
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=opts.max_requeues)
        ex.update_parameters(**slurm_parameters(opts, array=array))
    else:
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=opts.max_requeues)
        ex.update_parameters(
            timeout_min=opts.time, tasks_per_node=opts.tasks_per_node, gpus_per_node=opts.gpus_per_node,
            signal_delay_s=min(opts.signal_delay_s, 60 * opts.time // 2),
        )
    return ex


def _submitit_sbatch_text(command: str, folder: Path, params: dict[str, Any]) -> str:
    """The exact text submitit writes for these parameters.

    submitit has no public call that returns the script without submitting it, and
    ``--dry-run`` and ``sbatch --test-only`` must show and check the very script a submission
    sends, not a re-implementation of it: so this one function uses its private builder.
    """
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(command=command, folder=folder, **params)


def sbatch_script(opts: ClusterOptions, folder: str | Path, *, array_size: int | None = None) -> str:
    """The sbatch script submitit would submit (SLURM), or a description of the local processes."""
    folder = Path(folder).absolute()
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    if opts.cluster == "local":
        return (
            f"# --cluster local: {opts.tasks_per_node} process(es) on this machine via submitit.LocalExecutor\n"
            f"# each runs: {command}\n# time limit: {opts.time} min; logs: {folder}\n"
        )
    params = slurm_parameters(opts, array=array_size is not None)
    if array_size is not None:
        params["map_count"] = array_size
    return _submitit_sbatch_text(command, folder, params)


def run_command(cmd: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess:
    """``cmd`` run to its end; :class:`LaunchError` when it is missing or does not answer within ``timeout``."""
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise LaunchError(f"'{cmd[0]}' not found: is this a SLURM login node? (use --cluster local to run here)") from e
    except subprocess.TimeoutExpired as e:
        raise LaunchError(f"'{' '.join(cmd)}' did not answer within {timeout:.0f}s: is the SLURM controller up?") from e


def requeue_this_job(budget: int, env: dict[str, str] | None = None) -> str:
    """Ask SLURM to requeue the job this process runs in (``scontrol requeue``: it ends every rank
    and queues the job again, which then resumes from its last committed checkpoint), unless the
    job restarted ``budget`` times already (``SLURM_RESTART_COUNT``). Returns what was done, in
    words; never raises (it runs on the way out of a failing process)."""
    env = os.environ if env is None else env
    job = env.get("SLURM_JOB_ID", "")
    if not job or env.get("SUBMITIT_EXECUTOR", "slurm") != "slurm":  # a local job run inside an allocation is not one
        return "not a SLURM batch job: not requeued"
    restarts = int(env.get("SLURM_RESTART_COUNT", "0") or 0)
    if restarts >= budget:
        return f"job {job} not requeued: it restarted {restarts} time(s) already (train.watchdog_requeues = {budget})"
    try:
        r = run_command(["scontrol", "requeue", job], timeout=30)
    except LaunchError as e:
        return f"job {job} not requeued: {e}"
    if r.returncode != 0:
        return f"job {job} not requeued: scontrol requeue said {(r.stderr or r.stdout).strip()!r}"
    return f"requeued job {job} (restart {restarts + 1} of at most {budget}): it resumes from the last committed checkpoint"


SINFO_FORMAT = "%R|%N|%c|%m|%G"  # partition | node | CPUs | memory (MB) | generic resources


def parse_sinfo(text: str) -> dict[str, list[dict[str, Any]]]:
    """``sinfo -h -N -o '%R|%N|%c|%m|%G'`` output → partition → nodes ``[{name, cpus, mem_mb, gpus}]``.

    GPUs are summed over every ``gpu[:type]:N`` entry of the node's GRES (``gpu:a100:4(S:0-1)``
    → 4); CPU and memory fields keep their digits only (``64+`` → 64).
    """
    parts: dict[str, list[dict[str, Any]]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        part, node, cpus, mem, gres = (line.split("|") + [""] * 5)[:5]
        gpus = sum(int(m.group(1)) for m in re.finditer(r"gpu(?::[^:,()]+)?:(\d+)", gres))
        parts.setdefault(part, []).append({"name": node, "cpus": int(re.sub(r"\D", "", cpus) or 0),
                                           "mem_mb": int(re.sub(r"\D", "", mem) or 0), "gpus": gpus})
    return parts


def partitions() -> dict[str, list[dict[str, Any]]]:
    """The cluster's partitions and their nodes, as ``sinfo`` reports them (:func:`parse_sinfo`)."""
    r = run_command(["sinfo", "-h", "-N", "-o", SINFO_FORMAT])
    if r.returncode != 0:
        raise LaunchError(f"sinfo failed: {r.stderr.strip() or r.stdout.strip()} (is the SLURM controller reachable? "
                          f"SLURM_CONF={os.environ.get('SLURM_CONF', '')!r})")
    return parse_sinfo(r.stdout)


def check_fit(opts: ClusterOptions, parts: dict[str, list[dict[str, Any]]]) -> None:
    """Refuse a request that not even the fewest nodes it asks for (``opts.node_range``) of ``parts``
    (:func:`parse_sinfo`) can hold."""
    if not parts:
        raise LaunchError("sinfo lists no partitions: is the SLURM cluster up?")
    if opts.partition is not None:
        if opts.partition not in parts:
            raise LaunchError(f"--partition {opts.partition!r}: unknown partition; this cluster has: {', '.join(sorted(parts))}")
        nodes, where = parts[opts.partition], f"partition {opts.partition!r}"
    else:
        nodes, where = [n for ns in parts.values() for n in ns], "this cluster"
    need_cpus = opts.tasks_per_node * (opts.cpus_per_task or 1)
    need_mb = mem_mb(opts.mem) if opts.mem else 0
    fit = [n for n in nodes if n["cpus"] >= need_cpus and n["gpus"] >= opts.gpus_per_node and n["mem_mb"] >= need_mb]
    names = len({n["name"] for n in fit})
    if names < opts.node_range[0]:
        biggest = max(nodes, key=lambda n: (n["cpus"], n["gpus"]))
        raise LaunchError(
            f"impossible request: {opts.nodes_text} node(s) x {opts.tasks_per_node} task(s) x {opts.cpus_per_task or 1} CPU(s)"
            f"{f' x {opts.gpus_per_node} GPU(s)' if opts.gpus_per_node else ''}{f' with {opts.mem} memory' if opts.mem else ''}"
            f" per node; {where} has {names} node(s) that fit (largest node {biggest['name']}: {biggest['cpus']} CPUs, "
            f"{biggest['gpus']} GPUs, {biggest['mem_mb']} MB)"
        )


def check_request(opts: ClusterOptions, *, array_size: int | None = None) -> None:
    """Refuse, with a message a user can act on, a request SLURM could never run.

    Checks the partition exists and has ``--nodes`` nodes with enough CPUs, memory and GPUs
    for ``--tasks-per-node`` x ``--cpus-per-task`` (:func:`check_fit`), then asks SLURM itself
    (``sbatch --test-only`` on the real script). Local requests were checked by
    :meth:`ClusterOptions.validate`. Writes nothing.
    """
    opts.validate()
    if opts.cluster != "slurm":
        return
    check_fit(opts, partitions())
    # SLURM's own verdict on the exact script (account, qos, constraint, time limits, ...).
    with tempfile.TemporaryDirectory(prefix="c2p-sbatch-") as tmp:
        script = Path(tmp) / "job.sh"
        script.write_text(sbatch_script(opts, Path(tmp) / "%j", array_size=array_size))
        r = run_command(["sbatch", "--test-only", str(script)])
    if r.returncode != 0:
        raise LaunchError(f"SLURM refuses the request (sbatch --test-only): {(r.stderr or r.stdout).strip()}")


def parse_squeue_state(stdout: str, stderr: str, returncode: int) -> str:
    """``squeue -h -j ID -o %T --states=all`` → the job's state; ``GONE`` once SLURM forgot the
    job (MinJobAge after its end), ``UNKNOWN`` when the controller did not answer (ask again
    later: never conclude "ended" from silence). Raises :class:`LaunchError` when squeue
    cannot reach SLURM at all (no config: asking again will not help)."""
    states = [s.strip() for s in stdout.split() if s.strip()]
    if states:
        return states[0]
    if returncode != 0 and "Invalid job id" not in stderr:
        if "fatal" in stderr or "configuration" in stderr:
            raise LaunchError(f"squeue cannot reach SLURM: {stderr.strip()} (SLURM_CONF={os.environ.get('SLURM_CONF', '')!r})")
        return "UNKNOWN"
    return "GONE"


def slurm_state(job_id: str) -> str:
    """The job's state from ``squeue`` (works without an accounting database); see :func:`parse_squeue_state`."""
    r = run_command(["squeue", "-h", "-j", str(job_id), "-o", "%T", "--states=all"], timeout=30)
    return parse_squeue_state(r.stdout, r.stderr, r.returncode)


def parse_node_addr(text: str) -> str | None:
    """``scontrol show node -o NAME`` output → the node's ``NodeAddr`` (None when absent).

    NodeAddr is how SLURM itself reaches the node: an address, or the node's name again where
    slurm.conf gives none (then DNS or /etc/hosts resolves it, as for any host name).
    """
    m = re.search(r"(?:^|\s)NodeAddr=(\S+)", text)
    return m.group(1) if m and m.group(1) not in ("(null)", "") else None


def node_address(name: str) -> str:
    """The address SLURM reaches node ``name`` at (its ``NodeAddr``), else ``name`` itself.

    Hosts of a cluster whose names do not resolve everywhere (no DNS entry for the compute
    network, or a test cluster of network namespaces) still rendezvous: a job's ranks and Ray
    nodes meet at the address slurm.conf gives, not at whatever the name resolves to. Any
    failure to ask (no ``scontrol``, an unknown node) falls back to the name.
    """
    try:
        r = subprocess.run(["scontrol", "show", "node", "-o", name], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return name
    return (parse_node_addr(r.stdout) if r.returncode == 0 else None) or name
