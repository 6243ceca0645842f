"""Render outputs in object storage: ``--out s3://bucket/prefix``.

The job works in a local stage directory with the layout of :mod:`c2p.sharddir` and the same
code as a local render; this module moves files between the stage and the bucket so that every
object appears only when complete and in an order a later run can trust:

- before planning, the small records (``plan.json``, the generations' uid lists, ``parts/``)
  are pulled into the stage and the bucket's tars listed once, so a re-run renders only the
  shards whose tar and ``parts/`` record are both in the bucket;
- each shard task uploads its own tar (one PUT or a multipart upload completed last), then its
  ``parts/`` record, from the worker that rendered it: the driver never relays shard bytes;
- the driver uploads the uid lists and ``plan.json`` before any task runs, and the contact sheets
  (``previews/``, read back from the bucket's tars), ``errors.jsonl``, ``warnings.jsonl`` and
  finally ``index.json`` after the last one.

The stage is :func:`c2p.storage.stage.stage_dir` of the address (``$C2P_STAGE_DIR``, default
``~/.cache/c2p/stage``, one folder per address); a worker on another node stages its shard under
the same path on its own disk.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from c2p import storage
from c2p.sharddir import (
    CONFIG_NAME, ERRORS_NAME, GENERATIONS_DIR, INDEX_NAME, PARTS_DIR, PLAN_NAME, PREVIEWS_DIR, SHARD_GLOB, WARNINGS_NAME,
    ShardDir,
)
from c2p.shards.record import PlanMismatch
from c2p.storage.stage import STAGE_ENV, stage_dir  # noqa: F401  (the job asks this module for its stage)

log = logging.getLogger(__name__)


def pull_records(url: str, stage: Path, overwrite: bool) -> set[str]:
    """Make ``stage`` hold the bucket's records (nothing else); returns the names of the tars in the bucket.

    Raises PlanMismatch for tars without a ``plan.json`` (not a render job's output) unless
    ``overwrite``, which deletes the job's objects instead.
    """
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    tree = storage.list_tree(url)
    tars = {k for k in tree if "/" not in k and Path(k).match(SHARD_GLOB)}
    if tars and PLAN_NAME not in tree:
        if not overwrite:
            raise PlanMismatch(f"output {url} holds {SHARD_GLOB} objects but no {PLAN_NAME}: not a render job's output; "
                               "expected an empty prefix, or job.overwrite=true to delete them")
        delete_job_objects(url, tree)
        return set()
    for key in tree:
        if key == PLAN_NAME or key.startswith((PARTS_DIR + "/", GENERATIONS_DIR + "/")):
            local = stage / key
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(storage.read_bytes(storage.join(url, key)))
    return tars


def delete_job_objects(url: str, tree: dict[str, int] | None = None) -> None:
    """Delete what a render job writes under ``url`` (``job.overwrite``); other objects stay."""
    tree = storage.list_tree(url) if tree is None else tree
    mine = [k for k in tree if k in (PLAN_NAME, INDEX_NAME, ERRORS_NAME, WARNINGS_NAME, CONFIG_NAME)
            or Path(k).match(SHARD_GLOB) or k.startswith((PARTS_DIR + "/", GENERATIONS_DIR + "/", PREVIEWS_DIR + "/"))]
    # index.json first: a reader never sees an index listing tars that are already gone.
    mine.sort(key=lambda k: k != INDEX_NAME)
    log.warning("job.overwrite=true: deleting the previous render in %s (%d objects)", url, len(mine))
    storage.delete([storage.join(url, k) for k in mine])


def push_plan(stage: Path, url: str) -> None:
    """Upload the uid lists, then ``plan.json`` and ``render.yaml`` (a plan never names a missing list)."""
    d = ShardDir(stage)
    for path in sorted(d.generations.glob("*.uids")):
        storage.put_file(path, storage.join(url, f"{GENERATIONS_DIR}/{path.name}"))
    storage.put_file(d.plan, storage.join(url, PLAN_NAME))
    storage.put_file(d.config, storage.join(url, CONFIG_NAME))


def push_shard(stage: Path, url: str, name: str) -> None:
    """Upload shard ``name``'s tar, then its ``parts/`` record (the record makes it complete), then
    drop the local tar (the stage keeps only records)."""
    d = ShardDir(stage)
    storage.put_file(d.shard(name), storage.join(url, name))
    storage.put_file(d.part(name), storage.join(url, f"{PARTS_DIR}/{d.part(name).name}"))
    d.shard(name).unlink()


def push_previews(paths: list[Path], url: str) -> list[str]:
    """Upload the contact sheets under ``previews/`` (one PUT each: an object is whole or absent),
    before ``index.json``; returns their addresses."""
    out = []
    for path in paths:
        out.append(storage.join(url, f"{PREVIEWS_DIR}/{path.name}"))
        storage.put_file(path, out[-1])
    return out


def push_index(stage: Path, url: str) -> None:
    """Upload ``errors.jsonl``, ``warnings.jsonl`` and, last, ``index.json``."""
    d = ShardDir(stage)
    for path in (d.errors, d.warnings, d.index):
        storage.put_file(path, storage.join(url, path.name))
