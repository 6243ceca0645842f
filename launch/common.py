"""The shared launcher of every entry point in ``launch/``: submit a job to SLURM (through
submitit) or run it as local processes, with the same code path.

What a launcher script does, in order (nothing is written before step 3)::

    cfg = load_config(...)                      # 1. the whole config validated
    opts = ClusterOptions.from_args(args)       #    + the resource request
    check_request(opts)                         # 2. refused here if SLURM can never run it
    job = submit(ClusterTask("c2p.train.pretrain:run", cfg), opts, run_dir, config_text=to_yaml(cfg))
                                                # 3. run dir + config.yaml, then sbatch
    print(describe_job(job, opts))              #    job id, logs, how to follow / cancel

``--cluster local`` runs the same submitted callable through submitit's LocalExecutor:
``--tasks-per-node`` local processes on this machine, each with SUBMITIT_LOCAL_* variables
that :func:`c2p.distributed.setup_env_from_cluster` maps to RANK/WORLD_SIZE/... exactly as
it maps SLURM_PROCID/SLURM_NTASKS/... on a cluster.

Preemption and timeout
----------------------
The submitted callable is a small class (:class:`ClusterTask`) whose ``checkpoint()`` returns a
fresh instance wrapped in ``DelayedSubmission``. SLURM sends USR2 ``signal_delay_s`` seconds
before the end of the allocation or on preemption; submitit's handler on rank 0 calls
``checkpoint()``, pickles the fresh instance and runs ``scontrol requeue``. The requeued job
starts from scratch in a new allocation and the trainer resumes from the run's ``latest``
committed checkpoint (``checkpoint.resume=auto``).

The handler saves nothing itself: DeepSpeed saves are collective (every rank must enter
them), and a signal arrives on one rank at an arbitrary point, so a save inside the handler
could deadlock. Checkpoints are written on the step schedule instead, so **a preemption loses
at most ``checkpoint.every`` optimizer steps** (the steps since the last committed checkpoint,
plus the partly done step) and the time to restart and reload. Pick ``checkpoint.every`` so
that this is a few minutes of work, and ``--signal-delay`` larger than one save.

Job arrays
----------
:func:`submit_array` sends a list of callables (e.g. a k-shot × seed fine-tuning sweep) as
ONE SLURM job array (``submitit`` ``executor.batch()``); :func:`collect` waits for all
elements and returns their results in order, or raises naming the failed elements and their
logs. Array elements are requeued independently.

Ray inside SLURM
----------------
:func:`run_ray_in_slurm` runs a function that needs a Ray cluster (the render job) inside a
SLURM allocation: a Ray head on the first node, a worker on every other node, the function
called on the head with the cluster's address, and every Ray process stopped afterwards,
also when the function raises.

The local SLURM used by the tests has no accounting database (no ``sacct``), so job state
is read with ``squeue`` here rather than through submitit's ``sacct`` watcher.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]

__all__ = [
    "LaunchError",
    "JobFailedError",
    "ClusterOptions",
    "ClusterTask",
    "RayClusterTask",
    "add_cluster_args",
    "default_cluster",
    "parse_time",
    "make_executor",
    "sbatch_script",
    "check_request",
    "submit",
    "submit_array",
    "collect",
    "wait",
    "describe_job",
    "slurm_state",
    "stop_ray_processes",
    "run_ray_in_slurm",
    "launch",
    "launch_array",
]


class LaunchError(RuntimeError):
    """A job that cannot be (or was not) submitted: the message says why."""


class JobFailedError(LaunchError):
    """A submitted job (or array element) ended without a result: the message names its logs."""


# ----------------------------------------------------------------------------- options


def _slurm_configured() -> bool:
    """``sbatch`` is on PATH and a slurm.conf is reachable (SLURM_CONF or the usual places).

    Debian installs the client tools without a config; such a machine is not a cluster.
    """
    if shutil.which("sbatch") is None:
        return False
    conf = os.environ.get("SLURM_CONF")
    candidates = [conf] if conf else ["/etc/slurm/slurm.conf", "/etc/slurm-llnl/slurm.conf", "/usr/local/etc/slurm.conf"]
    return any(c and Path(c).is_file() for c in candidates)


def default_cluster() -> str:
    """``slurm`` where SLURM is usable from this machine, else ``local``."""
    return "slurm" if _slurm_configured() else "local"


def parse_time(value: str | int) -> int:
    """SLURM time → whole minutes. Accepts ``90``, ``"90"``, ``"MM:SS"``, ``"HH:MM:SS"``,
    ``"D-HH"``, ``"D-HH:MM"``, ``"D-HH:MM:SS"`` (seconds round up)."""
    if isinstance(value, int):
        minutes = value
    else:
        text = str(value).strip()
        m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
        if not m:
            raise LaunchError(f"--time {value!r}: expected minutes or [D-]HH:MM[:SS] (e.g. 90, 02:00:00, 1-12:00:00)")
        days, a, b, c = m.groups()
        if days is not None:  # D-HH[:MM[:SS]]
            minutes = int(days) * 1440 + int(a) * 60 + int(b or 0) + (1 if c and int(c) else 0)
        elif b is None:  # MM
            minutes = int(a)
        elif c is None:  # MM:SS
            minutes = int(a) + (1 if int(b) else 0)
        else:  # HH:MM:SS
            minutes = int(a) * 60 + int(b) + (1 if int(c) else 0)
    if minutes < 1:
        raise LaunchError(f"--time {value!r}: expected at least one minute")
    return minutes


@dataclass
class ClusterOptions:
    """Where and how a job runs. Field names follow sbatch's options."""

    cluster: str = "local"
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: int = 60
    constraint: str | None = None
    mem: str | None = None
    exclusive: bool = False
    job_name: str = "c2p"
    sbatch: dict[str, Any] = field(default_factory=dict)
    signal_delay_s: int = 120
    max_requeues: int = 3
    array_parallelism: int = 64

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node

    def validate(self) -> None:
        if self.cluster not in ("slurm", "local"):
            raise LaunchError(f"--cluster {self.cluster!r}: expected slurm or local")
        for name in ("nodes", "tasks_per_node"):
            if getattr(self, name) < 1:
                raise LaunchError(f"--{name.replace('_', '-')} {getattr(self, name)}: expected at least 1")
        if self.gpus_per_node < 0:
            raise LaunchError(f"--gpus-per-node {self.gpus_per_node}: expected 0 or more")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise LaunchError(f"--cpus-per-task {self.cpus_per_task}: expected at least 1")
        if self.mem is not None and not re.fullmatch(r"\d+[KMGT]?B?", self.mem, flags=re.I):
            raise LaunchError(f"--mem {self.mem!r}: expected a size such as 64G or 500M")
        if self.gpus_per_node and self.tasks_per_node > self.gpus_per_node:
            raise LaunchError(
                f"--tasks-per-node {self.tasks_per_node} with --gpus-per-node {self.gpus_per_node}: "
                "expected at most one process per GPU"
            )
        if self.cluster == "local":
            if self.nodes != 1:
                raise LaunchError(f"--nodes {self.nodes} with --cluster local: the local executor runs on this machine only (expected 1)")
            if self.gpus_per_node:
                import torch  # lazy: only asked when GPUs are requested locally

                have = torch.cuda.device_count()
                if self.gpus_per_node > have:
                    raise LaunchError(f"--gpus-per-node {self.gpus_per_node} with --cluster local: this machine has {have} GPU(s)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ClusterOptions":
        """Options from the parsed flags of :func:`add_cluster_args` (validated)."""
        extra: dict[str, Any] = {}
        for item in args.sbatch or []:
            key, eq, value = item.partition("=")
            key = key.strip().lstrip("-")
            if not key:
                raise LaunchError(f"--sbatch {item!r}: expected an sbatch option such as mail-type=END or requeue")
            extra[key] = value if eq else True
        tasks = args.tasks_per_node if args.tasks_per_node is not None else max(1, args.gpus_per_node or 0)
        opts = cls(
            cluster=args.cluster,
            nodes=args.nodes,
            tasks_per_node=tasks,
            gpus_per_node=args.gpus_per_node or 0,
            cpus_per_task=args.cpus_per_task,
            partition=args.partition,
            account=args.account,
            qos=args.qos,
            time=parse_time(args.time),
            constraint=args.constraint,
            mem=args.mem,
            exclusive=args.exclusive,
            job_name=args.job_name,
            sbatch=extra,
            signal_delay_s=args.signal_delay,
            max_requeues=args.max_requeues,
            array_parallelism=args.array_parallelism,
        )
        opts.validate()
        return opts


def add_cluster_args(parser: argparse.ArgumentParser, *, job_name: str = "c2p") -> None:
    """The resource flags every launcher shares (``--cluster``, ``--nodes``, ... ``--dry-run``)."""
    g = parser.add_argument_group("cluster (SLURM through submitit, or local processes)")
    g.add_argument("--cluster", choices=["slurm", "local"], default=default_cluster(), help="default: slurm where sbatch and a slurm.conf exist, else local (now: %(default)s)")
    g.add_argument("--nodes", type=int, default=1, help="nodes (SLURM)")
    g.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node; one process per GPU")
    g.add_argument("--tasks-per-node", type=int, default=None, help="processes (ranks) per node (default: GPUs per node, or 1)")
    g.add_argument("--cpus-per-task", type=int, default=None, help="CPU cores per rank (data loader workers + 1)")
    g.add_argument("--partition", default=None)
    g.add_argument("--account", default=None)
    g.add_argument("--qos", default=None)
    g.add_argument("--time", default="60", help="wall time: minutes or [D-]HH:MM:SS (default 60)")
    g.add_argument("--constraint", default=None)
    g.add_argument("--mem", default=None, help="memory per node, e.g. 64G")
    g.add_argument("--exclusive", action="store_true")
    g.add_argument("--job-name", default=job_name)
    g.add_argument("--sbatch", action="append", metavar="KEY[=VALUE]", help="any other sbatch option, repeatable (e.g. --sbatch mail-type=END)")
    g.add_argument("--signal-delay", type=int, default=120, help="seconds between the USR2 warning and the end of the allocation")
    g.add_argument("--max-requeues", type=int, default=3, help="requeues after timeouts (preemptions do not count)")
    g.add_argument("--array-parallelism", type=int, default=64, help="job array elements running at once")
    g.add_argument("--dry-run", action="store_true", help="print the sbatch script and the resolved config; submit nothing")
    w = g.add_mutually_exclusive_group()
    w.add_argument("--wait", dest="wait", action="store_true", default=None, help="wait for the job and print its result (default for --cluster local)")
    w.add_argument("--no-wait", dest="wait", action="store_false", help="return after submission (default for --cluster slurm)")


# ----------------------------------------------------------------------------- the submitted callables


def _resolve(target: str) -> Callable[..., Any]:
    """``"package.module:function"`` → the function (imported in the job, not at submission)."""
    module, _, name = target.partition(":")
    if not module or not name:
        raise LaunchError(f"target {target!r}: expected 'package.module:function'")
    fn = importlib.import_module(module)
    for part in name.split("."):
        fn = getattr(fn, part)
    return fn  # type: ignore[return-value]


class ClusterTask:
    """The callable a job runs on every rank: export the torch.distributed variables, then
    call ``target(cfg)`` (imported lazily inside the job, so submission needs neither torch
    nor DeepSpeed).

    ``checkpoint()`` is what submitit calls on preemption/timeout: it returns a *fresh*
    instance, and the requeued job resumes from the run's ``latest`` checkpoint because the
    target resumes by itself (``checkpoint.resume=auto``); no state travels in the pickle.
    """

    def __init__(self, target: str, cfg: Any, *, name: str = "") -> None:
        self.target, self.cfg, self.name = target, cfg, name or target

    def __call__(self) -> Any:
        from c2p.distributed import setup_env_from_cluster

        setup_env_from_cluster()
        return _resolve(self.target)(self.cfg)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(type(self)(self.target, self.cfg, name=self.name))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


# ----------------------------------------------------------------------------- executors


def _ensure_importable() -> None:
    """Jobs unpickle :class:`ClusterTask` from ``launch.common`` and import ``c2p``: put the
    repository on the PYTHONPATH that sbatch (``--export=ALL``) and the local executor pass on."""
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO) not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *parts])


def _slurm_parameters(opts: ClusterOptions, *, array: bool = False) -> dict[str, Any]:
    extra: dict[str, Any] = {"requeue": True}
    if opts.mem:
        extra["mem"] = opts.mem  # as given (submitit's own `mem` wants GB as a number)
    extra.update(opts.sbatch)
    params: dict[str, Any] = {
        "job_name": opts.job_name,
        "time": opts.time,
        "nodes": opts.nodes,
        "ntasks_per_node": opts.tasks_per_node,
        "signal_delay_s": opts.signal_delay_s,
        "additional_parameters": extra,
        # One rank dying (a crash, not a requeue) ends the step: the others would otherwise
        # wait in a collective, or for a Ray head that is gone, until the time limit.
        "srun_args": ["--kill-on-bad-exit=1"],
        "setup": [f"export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}"],
    }
    for name in ("partition", "account", "qos", "constraint", "cpus_per_task"):
        if getattr(opts, name) is not None:
            params[name] = getattr(opts, name)
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

    _ensure_importable()
    if opts.cluster == "slurm":
        ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=opts.max_requeues)
        ex.update_parameters(**_slurm_parameters(opts, array=array))
    else:
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=opts.max_requeues)
        ex.update_parameters(
            timeout_min=opts.time, tasks_per_node=opts.tasks_per_node, gpus_per_node=opts.gpus_per_node, signal_delay_s=min(opts.signal_delay_s, 60 * opts.time // 2)
        )
    return ex


def sbatch_script(opts: ClusterOptions, folder: str | Path, *, array_size: int | None = None) -> str:
    """The sbatch script submitit would submit (SLURM), or a description of the local processes."""
    from submitit.slurm.slurm import _make_sbatch_string  # the exact text submitit writes

    folder = Path(folder).absolute()
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    if opts.cluster == "local":
        return (
            f"# --cluster local: {opts.tasks_per_node} process(es) on this machine via submitit.LocalExecutor\n"
            f"# each runs: {command}\n# time limit: {opts.time} min; logs: {folder}\n"
        )
    params = _slurm_parameters(opts, array=array_size is not None)
    if array_size is not None:
        params["map_count"] = array_size
    return _make_sbatch_string(command=command, folder=folder, **params)


# ----------------------------------------------------------------------------- checks before submission


def _run(cmd: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise LaunchError(f"'{cmd[0]}' not found: is this a SLURM login node? (use --cluster local to run here)") from e
    except subprocess.TimeoutExpired as e:
        raise LaunchError(f"'{' '.join(cmd)}' did not answer within {timeout:.0f}s: is the SLURM controller up?") from e


def _partitions() -> dict[str, list[dict[str, Any]]]:
    """partition → nodes ``[{name, cpus, mem_mb, gpus}]`` as ``sinfo`` reports them."""
    r = _run(["sinfo", "-h", "-N", "-o", "%R|%N|%c|%m|%G"])
    if r.returncode != 0:
        raise LaunchError(f"sinfo failed: {r.stderr.strip() or r.stdout.strip()} (is the SLURM controller reachable? SLURM_CONF={os.environ.get('SLURM_CONF', '')!r})")
    parts: dict[str, list[dict[str, Any]]] = {}
    for line in r.stdout.splitlines():
        if not line.strip():
            continue
        part, node, cpus, mem, gres = (line.split("|") + [""] * 5)[:5]
        gpus = sum(int(m.group(1)) for m in re.finditer(r"gpu(?::[^:,()]+)?:(\d+)", gres))
        parts.setdefault(part, []).append({"name": node, "cpus": int(re.sub(r"\D", "", cpus) or 0), "mem_mb": int(re.sub(r"\D", "", mem) or 0), "gpus": gpus})
    return parts


def _mem_mb(mem: str) -> int:
    m = re.fullmatch(r"(\d+)([KMGT]?)B?", mem.strip(), flags=re.I)
    assert m, mem
    scale = {"": 1, "K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}[m.group(2).upper()]
    return int(int(m.group(1)) * scale)


def check_request(opts: ClusterOptions, *, array_size: int | None = None) -> None:
    """Refuse, with a message a user can act on, a request SLURM could never run.

    Checks the partition exists and has ``--nodes`` nodes with enough CPUs, memory and GPUs
    for ``--tasks-per-node`` x ``--cpus-per-task``, then asks SLURM itself
    (``sbatch --test-only`` on the real script). Local requests were checked by
    :meth:`ClusterOptions.validate`. Writes nothing.
    """
    opts.validate()
    if opts.cluster != "slurm":
        return
    parts = _partitions()
    if not parts:
        raise LaunchError("sinfo lists no partitions: is the SLURM cluster up?")
    if opts.partition is not None:
        if opts.partition not in parts:
            raise LaunchError(f"--partition {opts.partition!r}: unknown partition; this cluster has: {', '.join(sorted(parts))}")
        nodes = parts[opts.partition]
        where = f"partition {opts.partition!r}"
    else:
        nodes = [n for ns in parts.values() for n in ns]
        where = "this cluster"
    need_cpus = opts.tasks_per_node * (opts.cpus_per_task or 1)
    fit = [n for n in nodes if n["cpus"] >= need_cpus and n["gpus"] >= opts.gpus_per_node and (not opts.mem or n["mem_mb"] >= _mem_mb(opts.mem))]
    names = len({n["name"] for n in fit})
    if names < opts.nodes:
        biggest = max(nodes, key=lambda n: (n["cpus"], n["gpus"]))
        raise LaunchError(
            f"impossible request: {opts.nodes} node(s) x {opts.tasks_per_node} task(s) x {opts.cpus_per_task or 1} CPU(s)"
            f"{f' x {opts.gpus_per_node} GPU(s)' if opts.gpus_per_node else ''}{f' with {opts.mem} memory' if opts.mem else ''}"
            f" per node; {where} has {names} node(s) that fit (largest node {biggest['name']}: {biggest['cpus']} CPUs, "
            f"{biggest['gpus']} GPUs, {biggest['mem_mb']} MB)"
        )
    # SLURM's own verdict on the exact script (account, qos, constraint, time limits, ...).
    with tempfile.TemporaryDirectory(prefix="c2p-sbatch-") as tmp:
        script = Path(tmp) / "job.sh"
        script.write_text(sbatch_script(opts, Path(tmp) / "%j", array_size=array_size))
        r = _run(["sbatch", "--test-only", str(script)])
    if r.returncode != 0:
        raise LaunchError(f"SLURM refuses the request (sbatch --test-only): {(r.stderr or r.stdout).strip()}")


# ----------------------------------------------------------------------------- submission


def submit(
    task: Callable[[], Any],
    opts: ClusterOptions,
    run_dir: str | Path,
    *,
    config_text: str | None = None,
    log_subdir: str = "logs",
    dry_run: bool = False,
    out: Any = None,
) -> Any:
    """Submit one job running ``task`` on every rank; returns the submitit Job (None on dry run).

    ``run_dir`` and ``run_dir/config.yaml`` (``config_text``) are written before submission;
    logs go to ``run_dir/<log_subdir>/<job id>/``. If the submission fails, a run directory
    this call created is removed again (nothing half-made is left), and :class:`LaunchError`
    says why. The request is checked first (:func:`check_request`).
    """
    out = out or sys.stdout
    run_dir = Path(run_dir).absolute()
    folder = run_dir / log_subdir / "%j"
    if dry_run:
        print(f"# dry run: nothing is written or submitted\n# run dir: {run_dir}\n# ---- {'sbatch script' if opts.cluster == 'slurm' else 'local job'}", file=out)
        print(sbatch_script(opts, folder), file=out)
        if config_text is not None:
            print("# ---- resolved config (would be written to config.yaml)", file=out)
            print(config_text, file=out)
        return None
    check_request(opts)
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if config_text is not None:
            from c2p.fileio import atomic_write_bytes

            atomic_write_bytes(run_dir / "config.yaml", config_text.encode(), mode=0o644)
        job = make_executor(opts, folder).submit(task)
    except BaseException as e:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        if isinstance(e, LaunchError):
            raise
        if isinstance(e, Exception):
            raise LaunchError(f"submission of {task!r} failed: {e}") from e
        raise
    return job


def submit_array(
    tasks: Sequence[Callable[[], Any]],
    opts: ClusterOptions,
    log_dir: str | Path,
    *,
    dry_run: bool = False,
    out: Any = None,
) -> list[Any]:
    """Submit ``tasks`` as ONE job array (SLURM ``--array=0-N``); returns one Job per element.

    Each element runs its task with ``opts``' resources (a sweep of single-process
    fine-tunings: ``--tasks-per-node 1``). Logs: ``log_dir/<array id>_<index>/``.
    """
    out = out or sys.stdout
    if not tasks:
        raise LaunchError("job array: expected at least one task")
    log_dir = Path(log_dir).absolute()
    folder = log_dir / "%j"
    if dry_run:
        print(f"# dry run: a job array of {len(tasks)} element(s); nothing is submitted", file=out)
        print(sbatch_script(opts, folder, array_size=len(tasks)), file=out)
        for i, t in enumerate(tasks):
            print(f"# [{i}] {t!r}", file=out)
        return []
    check_request(opts, array_size=len(tasks))
    created = not log_dir.exists()
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        ex = make_executor(opts, folder, array=True)
        with ex.batch():
            jobs = [ex.submit(t) for t in tasks]
    except Exception as e:
        if created:
            shutil.rmtree(log_dir, ignore_errors=True)
        raise LaunchError(f"submission of a job array of {len(tasks)} failed: {e}") from e
    return jobs


def describe_job(job: Any, opts: ClusterOptions, run_dir: str | Path | None = None) -> str:
    """Job id, where its logs are and how to follow, inspect and cancel it."""
    stdout, stderr = job.paths.stdout, job.paths.stderr
    lines = [f"submitted job {job.job_id} ({opts.cluster}: {opts.nodes} node(s) x {opts.tasks_per_node} task(s))"]
    if run_dir is not None:
        lines.append(f"  run dir : {Path(run_dir).absolute()}")
    lines += [
        f"  logs    : {stdout} (rank 0 stdout)",
        f"            {stderr} (rank 0 stderr; rank r: {job.job_id}_<r>_log.out/.err beside them)",
        f"  follow  : tail -F {stderr}",
    ]
    if opts.cluster == "slurm":
        lines += [f"  status  : squeue -j {job.job_id}    (scontrol show job {job.job_id})", f"  cancel  : scancel {job.job_id}"]
    else:
        lines += [f"  cancel  : kill -INT {job.job_id}   (the local controller process)"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- waiting


_TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "BOOT_FAIL", "OUT_OF_MEMORY", "DEADLINE", "PREEMPTED", "SPECIAL_EXIT", "REVOKED"}


def slurm_state(job_id: str) -> str:
    """The job's state from ``squeue`` (works without an accounting database); ``GONE`` once
    SLURM forgot it (MinJobAge after the end), ``UNKNOWN`` when squeue did not answer."""
    r = _run(["squeue", "-h", "-j", str(job_id), "-o", "%T", "--states=all"], timeout=30)
    states = [s.strip() for s in r.stdout.split() if s.strip()]
    if states:
        return states[0]
    if r.returncode != 0 and "Invalid job id" not in r.stderr:
        if "fatal" in r.stderr or "configuration" in r.stderr:  # no cluster config here: asking again will not help
            raise LaunchError(f"squeue cannot reach SLURM: {r.stderr.strip()} (SLURM_CONF={os.environ.get('SLURM_CONF', '')!r})")
        return "UNKNOWN"  # controller busy: ask again later, never conclude "ended"
    return "GONE"


def _finished(job: Any) -> bool:
    tasks = job._sub_jobs or [job]
    if all(t.paths.result_pickle.exists() for t in tasks):
        return True
    if type(job).__name__ == "LocalJob":
        return job.done()
    state = slurm_state(job.job_id).split()[0].rstrip("+")
    return state in _TERMINAL or state == "GONE"


def _state_of(job: Any) -> str:
    return job.state if type(job).__name__ == "LocalJob" else slurm_state(job.job_id)


def wait(jobs: Sequence[Any], timeout_s: float | None = None, poll_s: float = 2.0) -> None:
    """Block until every job has ended (result written, or SLURM says it ended)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pending = list(jobs)
    while pending:
        pending = [j for j in pending if not _finished(j)]
        if not pending:
            return
        if deadline is not None and time.monotonic() > deadline:
            raise LaunchError(f"jobs {[j.job_id for j in pending]} still running after {timeout_s:.0f}s")
        time.sleep(poll_s)


def collect(jobs: Sequence[Any], timeout_s: float | None = None) -> list[Any]:
    """Wait for ``jobs`` and return each one's result (rank 0's for multi-task jobs), in order.

    Raises :class:`LaunchError` listing every failed element with its error and log path.
    """
    wait(jobs, timeout_s)
    results, failures = [], []
    for i, job in enumerate(jobs):
        # Task by task, and only where a result file exists: submitit's own results() would
        # wait on sacct for a task that died without one (a killed rank, a node failure).
        tasks = job._sub_jobs or [job]
        errors = []
        for t in tasks:
            if not t.paths.result_pickle.exists():
                tail = t.stderr() or ""
                errors.append(f"task {t.task_id} ended without a result (SLURM state {_state_of(job)}); stderr ends:\n{tail.strip()[-1500:]}")
                continue
            try:
                value = t.result()
            except Exception as e:  # the job's own error, re-raised by submitit with its traceback
                errors.append(str(e).strip()[-2000:])
                continue
            if t is tasks[0]:
                results.append(value)
        if errors:
            failures.append(f"[{i}] job {job.job_id}: {errors[0]}\n    logs: {job.paths.stderr}")
            if len(results) == i:
                results.append(None)
    if failures:
        raise JobFailedError(f"{len(failures)} of {len(jobs)} job(s) failed:\n" + "\n".join(failures))
    return results


# ----------------------------------------------------------------------------- one-call API


def launch(
    target: str,
    cfg: Any,
    opts: ClusterOptions,
    run_dir: str | Path,
    *,
    config_text: str | None = None,
    dry_run: bool = False,
    wait_for_result: bool | None = None,
    out: Any = None,
) -> Any:
    """Submit ``target(cfg)`` (``"package.module:function"``) on every rank of one job.

    Prints the job description; waits and returns rank 0's result when ``wait_for_result``
    (default: wait for local runs, return the Job for SLURM).
    """
    out = out or sys.stdout
    job = submit(ClusterTask(target, cfg), opts, run_dir, config_text=config_text, dry_run=dry_run, out=out)
    if job is None:
        return None
    print(describe_job(job, opts, run_dir), file=out, flush=True)
    if wait_for_result if wait_for_result is not None else opts.cluster == "local":
        return collect([job])[0]
    return job


def launch_array(
    target: str,
    cfgs: Sequence[Any],
    opts: ClusterOptions,
    log_dir: str | Path,
    *,
    names: Sequence[str] | None = None,
    dry_run: bool = False,
    wait_for_result: bool = True,
    out: Any = None,
) -> list[Any]:
    """A sweep as one job array: element i runs ``target(cfgs[i])``.

    Returns the results in order (``wait_for_result``), else the Jobs. For DOWNSTREAM's
    ``launch/finetune.py``: ``launch_array("c2p.eval.fewshot:run_one", [cfg_k_seed, ...], opts, run_dir / "sweep")``.
    """
    out = out or sys.stdout
    names = list(names) if names is not None else [f"{target}[{i}]" for i in range(len(cfgs))]
    tasks = [ClusterTask(target, c, name=n) for c, n in zip(cfgs, names)]
    jobs = submit_array(tasks, opts, log_dir, dry_run=dry_run, out=out)
    if not jobs:
        return []
    array_id = str(jobs[0].job_id).split("_")[0]
    print(f"submitted job array {array_id} with {len(jobs)} element(s); logs under {Path(log_dir).absolute()}", file=out, flush=True)
    if opts.cluster == "slurm":
        print(f"  status: squeue -j {array_id}    cancel: scancel {array_id}", file=out, flush=True)
    return collect(jobs) if wait_for_result else jobs


# ----------------------------------------------------------------------------- Ray inside SLURM


# The job's own interpreter, not whatever `ray` is first on PATH (a shim, another venv).
_RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


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
            f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
            f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}", *args,
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

        from c2p.fileio import atomic_write_bytes

        job = submitit.JobEnvironment()
        rank, ntasks = job.global_rank, job.num_tasks
        state = Path(self.state_dir) / str(job.job_id)
        state.mkdir(parents=True, exist_ok=True)
        token = f"{job.job_id}-{rank}"
        host_ip = socket.gethostbyname(job.hostname)
        proc = None
        try:
            if rank == 0:
                port, secret = _free_port(), secrets.token_hex(32)
                self._use_auth_token(secret)
                head_args = ["--head", f"--port={port}", "--include-dashboard=false", f"--ray-client-server-port={_free_port()}"]
                proc = self._ray_start([*head_args, f"--node-ip-address={host_ip}"], token)
                address = f"{host_ip}:{port}"
                self._wait_port(host_ip, port, proc)
                # head.json holds the cluster's secret: readable by the owner only.
                atomic_write_bytes(state / "head.json", json.dumps({"address": address, "token": secret}).encode(), mode=0o600)
                self._wait_nodes(address, ntasks, proc)
                return _resolve(self.target)(self.cfg, address=address)
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
    For ``launch/render.py --cluster slurm``::

        run_ray_in_slurm("c2p.shards.job:run_render_job", cfg, opts, log_dir)

    Returns the function's result (``wait_for_result``), else the Job.
    """
    out = out or sys.stdout
    opts = dataclasses.replace(opts, tasks_per_node=1)
    if opts.cluster != "slurm":
        raise LaunchError("run_ray_in_slurm: expected --cluster slurm (locally, call the function with address=None)")
    log_dir = Path(log_dir).absolute()
    task = RayClusterTask(target, cfg, log_dir / "ray", cpus_per_node=cpus_per_node or opts.cpus_per_task)
    job = submit(task, opts, log_dir, config_text=None, log_subdir="logs", dry_run=dry_run, out=out)
    if job is None:
        return None
    print(describe_job(job, opts, log_dir), file=out, flush=True)
    return collect([job], timeout_s)[0] if wait_for_result else job
