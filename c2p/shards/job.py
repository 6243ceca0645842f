"""The render job's driver: corpus → plan → one Ray task per missing shard → index.

    summary = run_render_job(load_config(RenderJobConfig, "configs/render/synthetic.yaml", overrides))

Steps, each safe to interrupt:

1. list the corpus and make the deterministic plan (:mod:`c2p.shards.plan`);
2. check the output: a directory holding another plan's shards is refused (PlanMismatch)
   unless ``job.overwrite=true``, which deletes the job's files and starts over; then
   ``plan.json`` and the resolved ``render.yaml`` are written and stale ``*.tmp`` removed;
3. shards whose tar and ``parts/`` record exist are skipped; the others go out as Ray tasks
   (``job.max_retries`` retries after a dead worker or a raised error; objects that fail
   are error records, not task failures), at most ``job.max_in_flight`` at once;
4. ``index.json`` (:class:`~c2p.schema.ShardIndex`: complete shards only), ``errors.jsonl``
   (objects left out: listing and object errors, in plan order), ``warnings.jsonl`` (objects
   written with a renderer fallback, e.g. a missing texture) and ``previews/`` are written from the
   ``parts/`` records, so a re-run that renders nothing still rebuilds them identically.

A shard task that keeps failing (it exhausted its retries) does not stop the others: it is
reported in the summary (``shards_failed``) and left out of ``index.json``; a re-run retries it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from c2p.config.core import to_yaml
from c2p.config.render import RenderJobConfig
from c2p.fileio import TMP_SUFFIX, atomic_write_bytes
from c2p.schema import ERRORS_NAME, INDEX_NAME, ShardIndex
from c2p.shards.plan import PLAN_NAME, PlanMismatch, RenderPlan, check_plan, make_plan, read_plan_record, write_plan_record
from c2p.shards.task import FAULT_ENV, PARTS_DIR, STAGING_DIR, ShardResult, read_part, render_shard

log = logging.getLogger(__name__)

CONFIG_NAME = "render.yaml"
WARNINGS_NAME = "warnings.jsonl"
PREVIEWS_DIR = "previews"
STAGES = ("load", "points", "render", "features", "encode", "write")


# ----------------------------------------------------------------------------- output directory


def _job_files(out: Path) -> list[Path]:
    """Everything a render job writes into ``out`` (and nothing else: ``overwrite`` deletes only these)."""
    names = [PLAN_NAME, INDEX_NAME, ERRORS_NAME, WARNINGS_NAME, CONFIG_NAME, PARTS_DIR, PREVIEWS_DIR, STAGING_DIR]
    files = [out / n for n in names if (out / n).exists()]
    files += sorted(out.glob("shard-*.tar")) + sorted(out.glob("*" + TMP_SUFFIX)) + sorted(out.glob(".fault-shard-*"))
    return files


def prepare_output(out: Path, plan: RenderPlan, overwrite: bool) -> None:
    """Make ``out`` ready for ``plan``: refuse or wipe another plan's output, record this plan.

    Raises :class:`PlanMismatch` when ``out`` holds shards of other settings (or shards
    without a ``plan.json``, i.e. not written by this job) and ``overwrite`` is false.
    """
    try:
        check_plan(out, plan)
        if read_plan_record(out) is None and any(out.glob("shard-*.tar")):
            raise PlanMismatch(f"output {out} holds shard-*.tar files but no {PLAN_NAME}: not a render job's output; "
                               "expected an empty or new directory, or job.overwrite=true to delete them")
    except PlanMismatch:
        if not overwrite:
            raise
        log.warning("job.overwrite=true: deleting the previous render in %s", out)
        for path in _job_files(out):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / PARTS_DIR).mkdir(exist_ok=True)
    # A crashed attempt leaves its staging folder (and a parts/*.tmp); this job owns the directory now.
    shutil.rmtree(out / STAGING_DIR, ignore_errors=True)
    for tmp in list(out.glob("*" + TMP_SUFFIX)) + list((out / PARTS_DIR).glob("*" + TMP_SUFFIX)):
        tmp.unlink(missing_ok=True)
    write_plan_record(out, plan)


def completed_shards(out: Path, plan: RenderPlan) -> dict[int, dict[str, Any]]:
    """Shards of ``plan`` already in ``out``: tar present and a ``parts/`` record of this plan."""
    done = {}
    for spec in plan.shards:
        part = read_part(out, spec.name)
        if part and part.get("fingerprint") == plan.fingerprint and (out / spec.name).is_file():
            done[spec.index] = part
    return done


# ----------------------------------------------------------------------------- Ray


def _shard_task(spec, cfg, fingerprint, actors, fault) -> ShardResult:
    """Body of the Ray task: the EGL context goes to the GPU Ray assigned to this task."""
    import ray

    return render_shard(spec, cfg, fingerprint, feature_actors=actors, device_index=_cuda_ordinal(ray.get_gpu_ids()), fault=fault)


def _cuda_ordinal(gpu_ids: list) -> int | None:
    """CUDA ordinal, as this process sees it, of the first GPU Ray assigned (None: no GPU).

    Ray restricts CUDA_VISIBLE_DEVICES to the assigned GPUs, so their physical ids become
    ordinals 0..n-1 here; the renderer maps the ordinal to its EGL device.
    """
    if not gpu_ids:
        return None
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    gpu = str(gpu_ids[0])
    return visible.index(gpu) if gpu in visible else int(gpu)


def _init_ray(address: str | None) -> bool:
    """Join ``address`` (or start a local Ray) unless this process is connected already.
    Returns True when this call connected (the job disconnects at the end)."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    return True


def _run_tasks(cfg: RenderJobConfig, plan: RenderPlan, todo: list, fault: str) -> tuple[dict[int, ShardResult], list[dict[str, Any]], float]:
    """Render the ``todo`` shards on Ray with a progress bar. Returns (results by shard index,
    failed shards, seconds from first submission to last completion)."""
    import ray
    from tqdm import tqdm

    actors = []
    tag = plan.settings["imgfeat"]["tag"]
    if tag:
        from c2p.shards.features import create_feature_actors

        actors = create_feature_actors(cfg.imgfeat.model, cfg.imgfeat.pretrained, count=cfg.imgfeat.actors,
                                       num_gpus=cfg.job.num_gpus, batch_size=cfg.imgfeat.batch_size, seed=cfg.job.seed)
    task = ray.remote(_shard_task).options(num_cpus=cfg.job.num_cpus, num_gpus=cfg.job.num_gpus,
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
                in_flight[task.remote(spec, cfg_ref, plan.fingerprint, actors, fault)] = spec
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                spec = in_flight.pop(ref)
                try:
                    results[spec.index] = ray.get(ref)
                    errors += len(results[spec.index].errors)
                except Exception as e:  # retries exhausted: report, keep rendering the others
                    log.error("shard %s failed after %d retries: %s", spec.name, cfg.job.max_retries, e)
                    failed.append({"shard": spec.name, "error": type(e).__name__, "reason": str(e).splitlines()[0][:500] if str(e) else ""})
                bar.update(len(spec.refs))
                bar.set_postfix(shards=f"{len(results)}/{len(todo)}", errors=errors, refresh=False)
    finally:
        bar.close()
        for a in actors:
            ray.kill(a)
    return results, failed, time.perf_counter() - t0


# ----------------------------------------------------------------------------- the job


def run_render_job(cfg: RenderJobConfig, address: str | None = None) -> dict[str, Any]:
    """Render ``cfg.corpus`` into WebDataset shards under ``cfg.out``; returns the summary.

    address: Ray cluster to join (None: the connected one, else a new local Ray). The
    summary: ``objects`` planned, ``samples`` written, ``errors`` and ``errors_by_reason``,
    ``shards`` / ``shards_rendered`` / ``shards_skipped`` / ``shards_failed``, ``bytes``,
    ``wall_s``, ``objects_per_s`` (objects of the rendered shards per second of rendering),
    ``timings`` (seconds per stage summed over tasks), ``out``. Raises PlanMismatch (see
    :func:`prepare_output`) or CorpusError (unusable corpus root) before writing anything.
    """
    from c2p.corpora import open_corpus

    t_start = time.perf_counter()
    out = Path(cfg.out).expanduser()
    corpus = open_corpus(cfg.corpus.name, cfg.corpus.root, cfg.corpus.split, **cfg.corpus.options)
    refs, listing_errors = corpus.list()
    plan = make_plan(cfg, refs, listing_errors, corpus.labels)
    prepare_output(out, plan, cfg.job.overwrite)
    atomic_write_bytes(out / CONFIG_NAME, to_yaml(cfg).encode())

    parts = completed_shards(out, plan)
    todo = [s for s in plan.shards if s.index not in parts]
    skipped = len(parts)
    results: dict[int, ShardResult] = {}
    failed: list[dict[str, Any]] = []
    render_s = 0.0
    if todo:
        connected = _init_ray(address)
        try:
            results, failed, render_s = _run_tasks(cfg, plan, todo, os.environ.get(FAULT_ENV, ""))
        finally:
            if connected:
                import ray

                ray.shutdown()
    for index, res in results.items():
        parts[index] = res.part_record()
    # Attempts killed mid-write (a dead worker that Ray retried) leave their staging folders.
    shutil.rmtree(out / STAGING_DIR, ignore_errors=True)

    index = finalize_output(out, plan, parts)
    previews = []
    if cfg.job.previews and (results or not (out / PREVIEWS_DIR).exists()) and index.num_samples:
        from c2p.shards.preview import write_previews

        try:
            previews = [str(p) for p in write_previews(out, index, cfg.job.previews)]
        except Exception as e:  # previews are for people; never fail a finished render over them
            log.warning("previews not written: %s: %s", type(e).__name__, e)
    errors, warnings = collect_records(plan, parts)
    timings = {k: round(sum(r.timings.get(k, 0.0) for r in results.values()), 3) for k in STAGES + ("total",)}
    rendered_objects = sum(len(s.refs) for s in plan.shards if s.index in results)
    return {
        "corpus": plan.corpus,
        "objects": plan.total_objects,
        "samples": index.num_samples,
        "errors": len(errors),
        "errors_by_reason": dict(Counter(_reason_key(e) for e in errors).most_common()),
        "warnings": len(warnings),
        "warnings_by_reason": dict(Counter(_reason_key(w) for w in warnings).most_common()),
        "shards": len(plan.shards),
        "shards_rendered": len(results),
        "shards_skipped": skipped,
        "shards_failed": failed,
        "bytes": index.total_bytes,
        "wall_s": round(time.perf_counter() - t_start, 3),
        "render_s": round(render_s, 3),
        "objects_per_s": round(rendered_objects / render_s, 3) if render_s > 0 else 0.0,
        "timings": timings,
        "fingerprint": plan.fingerprint,
        "previews": previews,
        "out": str(out),
    }


def finalize_output(out: Path, plan: RenderPlan, parts: dict[int, dict[str, Any]]) -> ShardIndex:
    """Write ``index.json`` (complete shards only), ``errors.jsonl`` and ``warnings.jsonl`` from
    the parts records.

    They depend only on the plan and the shards, so every run that ends with the same shards
    writes the same bytes.
    """
    errors, warnings = collect_records(plan, parts)
    atomic_write_bytes(out / ERRORS_NAME, _jsonl(errors))
    atomic_write_bytes(out / WARNINGS_NAME, _jsonl(warnings))
    index = ShardIndex(
        corpus=plan.corpus,
        settings=plan.settings,
        labels=list(plan.labels),
        shards={parts[i]["name"]: int(parts[i]["samples"]) for i in sorted(parts)},
        total_objects=plan.total_objects,
        total_errors=len(errors),
        total_bytes=sum(int(parts[i]["bytes"]) for i in parts),
    )
    index.save(out)
    return index


def collect_records(plan: RenderPlan, parts: dict[int, dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """(errors, warnings) of a render in plan order: listing errors first, then shard by shard."""
    errors = plan.listing_errors + [e for i in sorted(parts) for e in parts[i]["errors"]]
    warnings = [w for i in sorted(parts) for w in parts[i].get("warnings", [])]
    return errors, warnings


def _jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()


def _reason_key(error: dict[str, Any]) -> str:
    """Group key of an error record for the summary: stage and the reason's first 80 characters."""
    reason = " ".join(str(error.get("reason", "")).split())
    return f"{error.get('stage', '?')}: {reason[:80]}"


def format_summary(summary: dict[str, Any]) -> str:
    """The summary for people: counts, errors by reason, size, time; the last line is the output path."""
    lines = [
        f"corpus {summary['corpus']}: {summary['objects']} objects planned, {summary['samples']} samples written, "
        f"{summary['errors']} errors",
        f"shards: {summary['shards']} total, {summary['shards_rendered']} rendered, {summary['shards_skipped']} skipped "
        f"(already complete), {len(summary['shards_failed'])} failed",
    ]
    for f in summary["shards_failed"]:
        lines.append(f"  FAILED {f['shard']}: {f['error']}: {f['reason']} (re-run to retry)")
    if summary["errors_by_reason"]:
        lines.append("errors by reason (details in errors.jsonl):")
        for reason, n in list(summary["errors_by_reason"].items())[:10]:
            lines.append(f"  {n:6d}  {reason}")
    if summary["warnings"]:
        lines.append(f"{summary['warnings']} objects written with a fallback (details in {WARNINGS_NAME}):")
        for reason, n in list(summary["warnings_by_reason"].items())[:5]:
            lines.append(f"  {n:6d}  {reason}")
    lines.append(f"size {summary['bytes'] / 2**20:.1f} MiB, wall time {summary['wall_s']:.1f} s"
                 + (f", {summary['objects_per_s']:.2f} objects/s" if summary["objects_per_s"] else ""))
    if summary["previews"]:
        lines.append(f"previews: {', '.join(summary['previews'])}")
    lines.append(f"output: {summary['out']}")
    return "\n".join(lines)
