"""The render job's driver: corpus → plan → one Ray task per missing shard → index.

    summary = run_render_job(load_config(RenderJobConfig, "configs/render/synthetic.yaml", overrides))

Steps, each safe to interrupt:

1. claim the output (:func:`c2p.shards.output.claim_output`): a directory holding another
   plan's shards is refused (PlanMismatch) unless ``job.overwrite=true``, which deletes the
   job's files and starts over;
2. list the corpus and make the deterministic plan (:mod:`c2p.shards.plan`): the recorded
   generations keep their shards, objects new to the listing form a new generation of new
   shards, objects gone from it are reported (``vanished``) and stay where they are; then
   ``plan.json``, the new generation's uid list and the resolved ``render.yaml`` are written
   and stale ``*.tmp`` removed;
3. shards whose tar and ``parts/`` record exist are skipped; the others go out as Ray tasks
   (:mod:`c2p.shards.raytasks`: ``job.max_retries`` retries after a dead worker or a raised
   error; objects that fail are error records, not task failures), at most
   ``job.max_in_flight`` at once;
4. ``index.json`` (:class:`~c2p.schema.ShardIndex`: complete shards only), ``errors.jsonl``
   (objects left out: listing and object errors, in plan order), ``warnings.jsonl`` (objects
   written with a renderer fallback, e.g. a missing texture) and ``previews/`` are written from the
   ``parts/`` records, so a re-run that renders nothing still rebuilds them identically.

A shard task that keeps failing (it exhausted its retries) does not stop the others: it is
reported in the summary (``shards_failed``) and left out of ``index.json``; a re-run retries it.
The file names are :mod:`c2p.sharddir`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from c2p import storage
from c2p.config.core import to_yaml
from c2p.config.render import RenderJobConfig
from c2p.fileio import atomic_write_bytes
from c2p.lease import Lease
from c2p.sharddir import ERRORS_NAME, WARNINGS_NAME, ShardDir
from c2p.shards.faults import FAULT_ENV
from c2p.shards.output import claim_output, collect_records, completed_shards, finalize_output, prepare_output, remove_staging
from c2p.shards.plan import make_plan, render_settings
from c2p.shards import remote as remote_io
from c2p.shards.record import generation_table
from c2p.shards.raytasks import init_ray, run_tasks, shutdown_ray
from c2p.shards.task import STAGES, ShardResult

log = logging.getLogger(__name__)


def run_render_job(cfg: RenderJobConfig, address: str | None = None) -> dict[str, Any]:
    """:func:`render_job` holding the lease of ``cfg.out`` (:mod:`c2p.lease`) until it ends: a second
    driver on the same output is refused (LeaseHeld, exit 2) naming this one. No lease on ``s3://``."""
    if storage.is_remote(cfg.out):
        return render_job(cfg, address)
    with Lease(Path(cfg.out).expanduser(), "render output"):
        return render_job(cfg, address)


def render_job(cfg: RenderJobConfig, address: str | None = None) -> dict[str, Any]:
    """Render ``cfg.corpus`` into WebDataset shards under ``cfg.out``; returns the summary.

    address: Ray cluster to join (None: the connected one, else a new local Ray). The
    summary: ``objects`` planned, ``samples`` written, ``errors`` and ``errors_by_reason``,
    ``shards`` / ``shards_rendered`` / ``shards_skipped`` / ``shards_failed``, ``bytes``,
    ``wall_s``, ``objects_per_s`` (objects of the rendered shards per second of rendering),
    ``timings`` (seconds per stage summed over tasks), ``generations`` (per run that added
    objects: when, how many, which shards), ``new_objects`` (added by this run), ``vanished``
    (planned objects the corpus no longer lists) with up to 20 ``vanished_uids``, ``out``.
    Raises PlanMismatch (see :func:`~c2p.shards.output.claim_output`) or CorpusError (unusable
    corpus root) before writing anything. An ``s3://`` ``cfg.out`` is rendered through a local
    stage (:mod:`c2p.shards.remote`).
    """
    from c2p.corpora import open_corpus

    t_start = time.perf_counter()
    corpus = open_corpus(cfg.corpus.name, cfg.corpus.root, cfg.corpus.split, **cfg.corpus.options)
    remote, remote_tars = "", None
    if storage.is_remote(cfg.out):  # work in a local stage, move files to and from the bucket
        remote = cfg.out
        remote_tars = remote_io.pull_records(remote, remote_io.stage_dir(remote), cfg.job.overwrite)
        cfg = dataclasses.replace(cfg, out=str(remote_io.stage_dir(remote)))
    out = Path(cfg.out).expanduser()
    shard_dir = ShardDir(out)
    had_plan = shard_dir.plan.exists()
    previous = claim_output(out, render_settings(cfg), cfg.job.overwrite)
    if remote and had_plan and previous is None:  # job.overwrite replaced another plan
        remote_io.delete_job_objects(remote)
        remote_tars = set()
    refs, listing_errors = corpus.list()
    plan = make_plan(cfg, refs, listing_errors, corpus.labels, previous)
    del refs  # the plan holds what it needs; a 10^7-object listing is worth freeing
    if plan.vanished:
        log.warning("%d planned objects are no longer listed by the corpus; they stay in their shards (e.g. %s)",
                    len(plan.vanished), ", ".join(plan.vanished[:3]))
    prepare_output(out, plan)
    atomic_write_bytes(shard_dir.config, to_yaml(dataclasses.replace(cfg, out=remote) if remote else cfg).encode())
    if remote:
        remote_io.push_plan(out, remote)

    parts = completed_shards(out, plan, remote_tars)
    todo = [s for s in plan.shards if s.index not in parts]
    skipped = len(parts)
    results: dict[int, ShardResult] = {}
    failed: list[dict[str, Any]] = []
    render_s = 0.0
    if todo:
        connected = init_ray(address)
        try:
            results, failed, render_s = run_tasks(cfg, plan, todo, os.environ.get(FAULT_ENV, ""), upload=remote)
        finally:
            if connected:
                shutdown_ray()
    for index, res in results.items():
        parts[index] = res.part_record()
    # Attempts killed mid-write (a dead worker that Ray retried) leave their staging folders.
    remove_staging(out)

    index = finalize_output(out, plan, parts)
    previews = _previews(cfg, out, index, fresh=bool(results), remote=remote)
    if remote:
        remote_io.push_index(out, remote)  # last: a reader that finds index.json finds everything it lists
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
        # where this run's shards were rendered: which nodes of a Ray cluster did the work
        "shards_by_host": dict(sorted(Counter(r.host for r in results.values()).items())),
        "bytes": index.total_bytes,
        "wall_s": round(time.perf_counter() - t_start, 3),
        "render_s": round(render_s, 3),
        "objects_per_s": round(rendered_objects / render_s, 3) if render_s > 0 else 0.0,
        "timings": timings,
        "fingerprint": plan.fingerprint,
        "generations": generation_table(plan),
        "new_objects": plan.generations[-1].objects if plan.new_generation else 0,
        "vanished": len(plan.vanished),
        "vanished_uids": plan.vanished[:20],
        "previews": previews,
        "out": remote or str(out),
    }


def _previews(cfg: RenderJobConfig, out: Path, index, *, fresh: bool, remote: str | None) -> list[str]:
    """Contact sheets of the first samples, read back from the tars (from the bucket for an
    ``s3://`` output, and uploaded there); their paths or addresses. Made again when this run
    rendered shards or there are none yet; previews are for people, so they never fail a render."""
    if not (cfg.job.previews and index.num_samples and (fresh or not ShardDir(out).previews.exists())):
        return []
    from c2p.shards.preview import write_previews

    try:
        paths = write_previews(out, index, cfg.job.previews, source=remote)
        return remote_io.push_previews(paths, remote) if remote else [str(p) for p in paths]
    except Exception as e:
        log.warning("previews not written: %s: %s", type(e).__name__, e)
        return []


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
    gens = summary.get("generations", [])
    if len(gens) > 1 or summary.get("vanished"):
        lines.append(f"plan: {len(gens)} generations ("
                     + ", ".join(f"{g['generation']}: {g['objects']} objects in shards {g['shards']}" for g in gens)
                     + f"); {summary.get('new_objects', 0)} new objects this run")
    if summary.get("vanished"):
        lines.append(f"{summary['vanished']} planned objects are no longer listed by the corpus (kept in their shards): "
                     + ", ".join(summary["vanished_uids"][:5]) + (" ..." if summary["vanished"] > 5 else ""))
    for f in summary["shards_failed"]:
        lines.append(f"  FAILED {f['shard']}: {f['error']}: {f['reason']} (re-run to retry)")
    if summary["errors_by_reason"]:
        lines.append(f"errors by reason (details in {ERRORS_NAME}):")
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
