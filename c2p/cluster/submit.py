"""Submission and waiting: one job on every rank (:func:`launch`), or a sweep as one job array
(:func:`launch_array`), on SLURM or as local processes through the same submitit code path.

Order of events in :func:`submit` (nothing is written before the request passed its checks)::

    check_request(opts)                          # refused here if SLURM can never run it
    run_dir/config.yaml                          # the resolved config, then
    executor.submit(task)                        # sbatch (or local processes)

Preemption and timeout
----------------------
The submitted callable (:class:`~c2p.cluster.task.ClusterTask`) has a ``checkpoint()`` that
returns a fresh instance wrapped in ``DelayedSubmission``. SLURM sends USR2 ``signal_delay_s``
seconds before the end of the allocation or on preemption; submitit's handler on rank 0 calls
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
:func:`submit_array` sends a list of callables (e.g. a k-shot x seed fine-tuning sweep) as
ONE SLURM job array (submitit's ``executor.batch()``); :func:`collect` waits for all
elements and returns their results in order, or raises naming the failed elements and their
logs. Array elements are requeued independently.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from c2p.cluster.errors import JobFailedError, LaunchError
from c2p.cluster.options import ClusterOptions
from c2p.cluster.slurm import TERMINAL_STATES, check_request, make_executor, run_command, sbatch_script, slurm_state
from c2p.cluster.task import ClusterTask
from c2p.fileio import atomic_write_bytes

log = logging.getLogger(__name__)

__all__ = ["submit", "submit_array", "describe_job", "wait", "collect", "launch", "launch_array"]


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
    lines = [f"submitted job {job.job_id} ({opts.cluster}: {opts.nodes_text} node(s) x {opts.tasks_per_node} task(s))"]
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


def _tasks(job: Any) -> list[Any]:
    """The job's tasks (ranks), each a submitit Job with its own result file."""
    return [job.task(i) for i in range(job.num_tasks)]


def _is_local(job: Any) -> bool:
    import submitit

    return isinstance(job, submitit.LocalJob)


def _finished(job: Any, first_rank_only: bool = False) -> bool:
    if all(t.paths.result_pickle.exists() for t in _tasks(job)[: 1 if first_rank_only else None]):
        return True
    if _is_local(job):
        return job.done()
    state = slurm_state(job.job_id).split()[0].rstrip("+")
    return state in TERMINAL_STATES or state == "GONE"


def _state_of(job: Any) -> str:
    """How the job ended, in words for a person: SLURM's state, or, for a local job (which has no
    scheduler, so no SLURM state), how its controller process ended."""
    if not _is_local(job):
        return f"SLURM state {slurm_state(job.job_id)}"
    process = getattr(job, "_process", None)  # submitit's Popen of the local controller
    code = process.poll() if process is not None else None
    if process is None:
        return f"local job {job.job_id}, not started by this process: {job.state.lower()}"
    if code is None:
        return f"local job {job.job_id} still running"
    if code < 0:
        return f"local job {job.job_id}: its controller was killed by {signal.Signals(-code).name}"
    return f"local job {job.job_id}: its processes have exited (controller exit status {code})"


_STARTED: set[str] = set()  # local jobs whose ranks were all seen running at once


def _child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:  # a kernel without CONFIG_PROC_CHILDREN: scan every process's parent
        kids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid:
                kids.append(int(stat.parent.name))
        return kids


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = _child_pids(todo.pop())
        out += kids
        todo += kids
    return out


def _end_local_job_if_a_rank_failed(job: Any) -> None:
    """``--cluster local``: once a rank has ended with an error or without a result, kill the
    job's other ranks (and their DataLoader workers) by pid.

    submitit's local controller waits for every rank before it ends, so a rank that failed
    (its watchdog fired, it crashed) next to one that is stopped or hung would keep the job,
    and the launcher waiting for it, alive until the time limit. On SLURM, ``srun
    --kill-on-bad-exit`` does the same. A rank's failure is seen as an error result, or as
    fewer live ranks plus results than the job's ranks once all of them were seen running.
    """
    if not _is_local(job) or job.num_tasks < 2 or job.done():
        return
    from submitit.core.utils import pickle_load

    controller = int(job.job_id)
    ranks = _child_pids(controller)
    if len(ranks) >= job.num_tasks:
        _STARTED.add(str(job.job_id))
    results = [t.paths.result_pickle for t in _tasks(job) if t.paths.result_pickle.exists()]
    errors = []
    for path in results:
        try:
            if pickle_load(path)[0] == "error":
                errors.append(path)
        except Exception:  # being written right now: judged at the next poll
            continue
    exited = str(job.job_id) in _STARTED and len(ranks) + len(results) < job.num_tasks
    if not (errors or exited) or not ranks:
        return
    victims = [p for r in ranks for p in [r, *_descendants(r)]]
    log.warning("job %s: a rank %s; killing its %d other rank(s) (pids %s) so that the job ends",
                job.job_id, "raised an error" if errors else "ended without a result", len(ranks),
                " ".join(map(str, ranks)))
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)  # SIGKILL also ends a stopped (SIGSTOP) process
        except ProcessLookupError:
            pass


def wait(jobs: Sequence[Any], timeout_s: float | None = None, poll_s: float = 2.0, *, first_rank_only: bool = False,
         elastic: ClusterOptions | None = None) -> None:
    """Block until every job has ended (result written, or SLURM says it ended); with
    ``first_rank_only``, until rank 0 of each has written its result. ``elastic``: the request
    of jobs submitted with ``--nodes MIN-MAX``, shrunk to the nodes left when a lost node
    stranded them (:func:`c2p.cluster.elastic.shrink_if_stranded`)."""
    from c2p.cluster.elastic import shrink_if_stranded

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pending = list(jobs)
    while pending:
        for job in pending:
            _end_local_job_if_a_rank_failed(job)
            if elastic is not None:
                shrink_if_stranded(job, elastic)
        pending = [j for j in pending if not _finished(j, first_rank_only)]
        if not pending:
            return
        if deadline is not None and time.monotonic() > deadline:
            raise LaunchError(f"jobs {[j.job_id for j in pending]} still running after {timeout_s:.0f}s")
        time.sleep(poll_s)


def collect(jobs: Sequence[Any], timeout_s: float | None = None, *, first_rank_only: bool = False,
            elastic: ClusterOptions | None = None) -> list[Any]:
    """Wait for ``jobs`` and return each one's result (rank 0's for multi-task jobs), in order.

    Raises :class:`LaunchError` listing every failed element with its error and log path.
    ``first_rank_only``: only rank 0's result counts, for jobs whose other ranks only serve it
    (a Ray cluster's workers) and may be lost with their node without failing the job.
    """
    wait(jobs, timeout_s, first_rank_only=first_rank_only, elastic=elastic)
    results, failures = [], []
    for i, job in enumerate(jobs):
        # Task by task, and only where a result file exists: submitit's own results() would
        # wait on sacct for a task that died without one (a killed rank, a node failure).
        tasks = _tasks(job)[: 1 if first_rank_only else None]
        errors = []
        for t in tasks:
            if not t.paths.result_pickle.exists():
                tail = t.stderr() or ""
                errors.append(f"task {t.task_id} ended without a result ({_state_of(job)}); stderr ends:\n{tail.strip()[-1500:]}")
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
    waiting = wait_for_result if wait_for_result is not None else opts.cluster == "local"
    if opts.min_nodes is not None and not waiting and opts.cluster == "slurm":
        print(f"  elastic : c2p-pretrain --follow {job.job_id}    (waits for the job; --nodes {opts.nodes_text} shrinks it "
              "after a lost node only while a launcher waits, otherwise it waits for its nodes)", file=out, flush=True)
    if waiting:
        # an elastic job (--nodes MIN-MAX) may end with fewer ranks than it asked for: rank 0's result is the job's
        elastic = opts if opts.min_nodes is not None else None
        return collect([job], first_rank_only=elastic is not None, elastic=elastic)[0]
    return job


def follow(job_id: str, out: Any = None) -> Any:
    """Wait for the SLURM job ``job_id``, submitted earlier by a launcher (``--no-wait``), as ``--wait``
    would have, and return rank 0's result: an elastic job (its ``--comment`` records the request,
    :func:`c2p.cluster.elastic.elastic_request`) is shrunk to the nodes left when a lost node
    strands it. :class:`LaunchError` for a job SLURM does not know or one without submitit's files."""
    import submitit

    from c2p.cluster.elastic import elastic_request, parse_job

    out = out or sys.stdout
    shown = run_command(["scontrol", "show", "job", "-o", str(job_id)], timeout=30)
    fields = parse_job(shown.stdout) if shown.returncode == 0 else {}
    if fields.get("JobId") != str(job_id):
        raise LaunchError(f"--follow {job_id}: SLURM does not know this job ({(shown.stderr or shown.stdout).strip()}); "
                          "expected the id of a job a c2p launcher submitted and SLURM still lists")
    folder = Path(fields.get("StdErr", "")).parent
    if not (folder / f"{job_id}_submitted.pkl").is_file():
        raise LaunchError(f"--follow {job_id}: no submitit files of it in {folder} (its StdErr's folder); "
                          "expected a job a c2p launcher submitted")
    elastic = elastic_request(fields)
    tasks = int(fields.get("NumTasks", "1") or 1) if elastic is None else 1  # an elastic job's result is rank 0's
    print(f"following job {job_id} ({fields.get('JobState', '?')}"
          + (f"; elastic: {elastic.min_nodes}-{elastic.nodes} node(s)" if elastic else "") + f"); logs: {folder}",
          file=out, flush=True)
    job = submitit.SlurmJob(folder=folder, job_id=str(job_id), tasks=tuple(range(tasks)))
    return collect([job], first_rank_only=elastic is not None, elastic=elastic)[0]


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
    ``c2p-finetune``: ``launch_array("c2p.eval.fewshot:run_one", [cfg_k_seed, ...], opts, run_dir / "sweep")``.
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
