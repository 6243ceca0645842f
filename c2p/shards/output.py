"""What the render job does to its output directory: claim it, find what is done, finish it.

- :func:`claim_output` reads the plan recorded there and refuses another plan's shards (or
  wipes them with ``job.overwrite``); :func:`prepare_output` removes what crashed attempts
  left and records the (possibly grown) plan;
- :func:`completed_shards`: the shards a re-run skips;
- :func:`finalize_output` writes ``index.json``, ``errors.jsonl`` and ``warnings.jsonl`` from the
  ``parts/`` records alone, so a re-run that renders nothing rebuilds them byte for byte.

Paths come from :class:`~c2p.sharddir.ShardDir`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from c2p.fileio import atomic_write_bytes
from c2p.schema import ShardIndex
from c2p.sharddir import PLAN_NAME, SHARD_GLOB, ShardDir
from c2p.shards.plan import RenderPlan
from c2p.shards.record import PlanMismatch, PlanRecord, check_settings, read_plan_record, write_plan_record
from c2p.shards.task import read_part

log = logging.getLogger(__name__)


def claim_output(out: Path, settings: dict[str, Any], overwrite: bool) -> PlanRecord | None:
    """The plan already recorded in ``out`` (None for a new or wiped directory), checked against
    this job's render ``settings``.

    Raises :class:`~c2p.shards.record.PlanMismatch` when ``out`` holds shards of other settings
    (or shards without a ``plan.json``, i.e. not written by this job) and ``overwrite`` is false;
    with ``overwrite`` the job's files are deleted instead. Nothing is written otherwise.
    """
    shard_dir = ShardDir(out)
    try:
        previous = read_plan_record(out)
        check_settings(out, previous, settings)
        if previous is None and shard_dir.shard_tars():
            raise PlanMismatch(f"output {out} holds {SHARD_GLOB} files but no {PLAN_NAME}: not a render job's output; "
                               "expected an empty or new directory, or job.overwrite=true to delete them")
        return previous
    except PlanMismatch:
        if not overwrite:
            raise
        log.warning("job.overwrite=true: deleting the previous render in %s", out)
        for path in shard_dir.job_files():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        return None


def prepare_output(out: Path, plan: RenderPlan) -> None:
    """Make the claimed ``out`` ready for ``plan``: remove what crashed attempts left, record the plan."""
    shard_dir = ShardDir(out)
    out.mkdir(parents=True, exist_ok=True)
    shard_dir.parts.mkdir(exist_ok=True)
    # A crashed attempt leaves its staging folder (and a parts/*.tmp); this job owns the directory now.
    remove_staging(out)
    for tmp in shard_dir.tmp_files():
        tmp.unlink(missing_ok=True)
    write_plan_record(out, plan)


def remove_staging(out: Path) -> None:
    """Delete the staging folders of shard attempts (all of them: call only when none runs)."""
    shutil.rmtree(ShardDir(out).staging, ignore_errors=True)


def completed_shards(out: Path, plan: RenderPlan, tars: set[str] | None = None) -> dict[int, dict[str, Any]]:
    """Shards of ``plan`` already in ``out``: a ``parts/`` record of the shard's generation and
    its tar. One listing of the directory, then one small read per record: no stat per object
    or per shard. ``tars``: the tar names present (default: those in ``out``; the bucket's for
    an ``s3://`` output). Returns their records by shard index."""
    if tars is None:
        tars = {p.name for p in ShardDir(out).shard_tars()}
    done = {}
    for spec in plan.shards:
        if spec.name not in tars:
            continue
        part = read_part(out, spec.name)
        if part and part.get("fingerprint") == spec.fingerprint:
            done[spec.index] = part
    return done


def finalize_output(out: Path, plan: RenderPlan, parts: dict[int, dict[str, Any]]) -> ShardIndex:
    """Write ``index.json`` (complete shards only), ``errors.jsonl`` and ``warnings.jsonl`` from
    the parts records.

    They depend only on the plan and the shards, so every run that ends with the same shards
    writes the same bytes.
    """
    shard_dir = ShardDir(out)
    errors, warnings = collect_records(plan, parts)
    atomic_write_bytes(shard_dir.errors, _jsonl(errors))
    atomic_write_bytes(shard_dir.warnings, _jsonl(warnings))
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
