"""The render job on Ray: one task per shard, a bounded number in flight, a progress bar.

Ray is imported here (and by the feature actors) only: the rest of the render job, like the
loader, runs without it.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from c2p.config.render import RenderJobConfig
from c2p.shards.plan import RenderPlan, ShardSpec
from c2p.shards.task import ShardResult, render_shard

log = logging.getLogger(__name__)


def shard_task(spec: ShardSpec, cfg: RenderJobConfig, actors: list, fault: str, upload: str) -> ShardResult:
    """Body of the Ray task: :func:`~c2p.shards.task.render_shard` with the EGL context on the
    GPU Ray assigned to this task."""
    import ray

    return render_shard(spec, cfg, feature_actors=actors, device_index=cuda_ordinal(ray.get_gpu_ids()), fault=fault,
                        upload=upload)


def cuda_ordinal(gpu_ids: list) -> int | None:
    """CUDA ordinal, as this process sees it, of the first GPU Ray assigned (None: no GPU).

    Ray restricts CUDA_VISIBLE_DEVICES to the assigned GPUs, so their physical ids become
    ordinals 0..n-1 here; the renderer maps the ordinal to its EGL device.
    """
    if not gpu_ids:
        return None
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    gpu = str(gpu_ids[0])
    return visible.index(gpu) if gpu in visible else int(gpu)


def task_error(e: BaseException) -> tuple[str, str]:
    """(error type, reason) of a failed shard task, as the summary reports them: the task's own
    exception, not Ray's wrapper. A ``RayTaskError`` prints as ``ray::shard_task() (pid=..., ip=...)``
    followed by the remote traceback; its ``cause`` is the exception the task raised (e.g.
    ``OSError: [Errno 28] No space left on device``). Other Ray errors (a worker that died, an
    object lost) are reported by their own first line."""
    import ray.exceptions

    cause = e.cause if isinstance(e, ray.exceptions.RayTaskError) and isinstance(getattr(e, "cause", None), BaseException) else e
    if cause is e and isinstance(e, ray.exceptions.RayTaskError):  # a cause Ray could not unpickle: its last line
        lines = [line for line in str(e).splitlines() if line.strip()]
        return type(e).__name__, (lines[-1].strip() if lines else "")[:500]
    lines = [line for line in str(cause).splitlines() if line.strip()]
    return type(cause).__name__, (lines[0].strip() if lines else repr(cause))[:500]


def init_ray(address: str | None) -> bool:
    """Join ``address`` (or start a local Ray) unless this process is connected already.
    Returns True when this call connected (the caller disconnects with :func:`shutdown_ray`)."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    return True


def shutdown_ray() -> None:
    """Disconnect this process from Ray (and stop the local Ray that :func:`init_ray` started)."""
    import ray

    ray.shutdown()


def run_tasks(cfg: RenderJobConfig, plan: RenderPlan, todo: list[ShardSpec], fault: str,
              upload: str = "") -> tuple[dict[int, ShardResult], list[dict[str, Any]], float]:
    """Render the ``todo`` shards on Ray with a progress bar (``upload``: the ``s3://`` output
    each task uploads its shard to, see :mod:`c2p.shards.remote`).

    Each shard is retried ``job.max_retries`` times; one that still fails is reported, not
    raised, and the others go on. Returns (results by shard index, failed shards as
    ``{"shard", "error", "reason"}``, seconds from first submission to last completion).
    """
    import ray
    from tqdm import tqdm

    actors = []
    tag = plan.settings["imgfeat"]["tag"]
    if tag:
        from c2p.shards.features import create_feature_actors

        actors = create_feature_actors(cfg.imgfeat.model, cfg.imgfeat.pretrained, count=cfg.imgfeat.actors,
                                       num_gpus=cfg.job.num_gpus, batch_size=cfg.imgfeat.batch_size, seed=cfg.job.seed)
    task = ray.remote(shard_task).options(num_cpus=cfg.job.num_cpus, num_gpus=cfg.job.num_gpus,
                                          max_retries=cfg.job.max_retries, retry_exceptions=True)
    limit = cfg.job.max_in_flight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    cfg_ref = ray.put(cfg)
    queue, in_flight = list(reversed(todo)), {}
    results: dict[int, ShardResult] = {}
    failed: list[dict[str, Any]] = []
    errors = 0
    bar = tqdm(total=sum(len(s.refs) for s in todo), unit="obj", desc=f"render {plan.corpus}", disable=not cfg.job.progress,
               dynamic_ncols=True, smoothing=0.1)
    t0 = time.perf_counter()
    try:
        while queue or in_flight:
            while queue and len(in_flight) < limit:
                spec = queue.pop()
                in_flight[task.remote(spec, cfg_ref, actors, fault, upload)] = spec
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                spec = in_flight.pop(ref)
                try:
                    results[spec.index] = ray.get(ref)
                    errors += len(results[spec.index].errors)
                except Exception as e:  # retries exhausted: report, keep rendering the others
                    error, reason = task_error(e)
                    log.error("shard %s failed after %d retries: %s: %s", spec.name, cfg.job.max_retries, error, reason)
                    failed.append({"shard": spec.name, "error": error, "reason": reason})
                bar.update(len(spec.refs))
                bar.set_postfix(shards=f"{len(results)}/{len(todo)}", errors=errors, refresh=False)
    finally:
        bar.close()
        for a in actors:
            ray.kill(a)
    return results, failed, time.perf_counter() - t0
