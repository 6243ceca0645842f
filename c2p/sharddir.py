"""The layout of a shard directory: every file and folder name the render job writes there.

    out/
      shard-000000.tar ...    the samples (c2p.schema); written as ``<name>.tmp``, then renamed
      index.json              ShardIndex: complete shards, sample counts, labels, settings
      errors.jsonl            objects left out, and why
      warnings.jsonl          objects written with a renderer fallback (e.g. a missing texture)
      plan.json               identity of the plan that owns the directory: settings, labels, generations
      generations/gen-NNNN.uids  the uids each run added to the plan, one a line, in plan order
      render.yaml             the resolved config of the last run
      parts/<shard>.json      one record per complete shard (counts, errors, warnings)
      .staging/<attempt>/     a shard attempt's tar until it is complete
      previews/preview-NNN.png  contact sheets for people
      .fault-shard-K          marker of an injected worker death (c2p.shards.faults)

A shard directory may also be an ``s3://bucket/prefix`` address with the same names under it;
:func:`list_shard_tars` lists the tars of either. The writer (:mod:`c2p.shards`) and the
readers (:mod:`c2p.schema`'s ``ShardIndex``, the loader, previews, exports) ask this module for
paths; no other module spells these names. It lives beside the schema, not in the job's
package, because readers need it and must not import the job; it imports nothing heavy.
"""

from __future__ import annotations

import fnmatch
import os
import time
from dataclasses import dataclass
from pathlib import Path

from c2p import storage
from c2p.fileio import TMP_SUFFIX

INDEX_NAME = "index.json"
ERRORS_NAME = "errors.jsonl"
WARNINGS_NAME = "warnings.jsonl"
PLAN_NAME = "plan.json"
CONFIG_NAME = "render.yaml"
PARTS_DIR = "parts"
GENERATIONS_DIR = "generations"
GENERATION_PATTERN = "gen-{:04d}.uids"
# Each attempt writes its tar in a folder of its own and renames it into place when complete:
# an attempt still running after its driver died (Ray may take a while to reap it) can then
# never rename a newer attempt's half-written file, which a shared ``<shard>.tar.tmp`` allows.
STAGING_DIR = ".staging"
PREVIEWS_DIR = "previews"
SHARD_PATTERN = "shard-{:06d}.tar"
SHARD_GLOB = "shard-*.tar"
PREVIEW_PATTERN = "preview-{:03d}.png"
FAULT_MARKER_PATTERN = ".fault-shard-{}"


def shard_name(index: int) -> str:
    """File name of shard ``index`` (0-based): ``shard-000042.tar``."""
    return SHARD_PATTERN.format(index)


@dataclass(frozen=True)
class ShardDir:
    """Paths inside the shard directory ``root``. Nothing is created here; the listing methods
    (:meth:`shard_tars`, :meth:`tmp_files`, :meth:`job_files`) glob what exists now."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))  # accept str roots too

    @property
    def index(self) -> Path:
        """``index.json`` (:class:`c2p.schema.ShardIndex`)."""
        return self.root / INDEX_NAME

    @property
    def errors(self) -> Path:
        """``errors.jsonl``: objects left out, one JSON record a line."""
        return self.root / ERRORS_NAME

    @property
    def warnings(self) -> Path:
        """``warnings.jsonl``: objects written with a renderer fallback."""
        return self.root / WARNINGS_NAME

    @property
    def plan(self) -> Path:
        """``plan.json``: the plan that owns the directory."""
        return self.root / PLAN_NAME

    @property
    def config(self) -> Path:
        """``render.yaml``: the resolved config of the last run."""
        return self.root / CONFIG_NAME

    @property
    def generations(self) -> Path:
        """``generations/``: the plan generations' uid lists."""
        return self.root / GENERATIONS_DIR

    def generation_uids(self, number: int) -> Path:
        """``generations/gen-NNNN.uids``: generation ``number``'s uids in plan order."""
        return self.generations / GENERATION_PATTERN.format(number)

    @property
    def parts(self) -> Path:
        """``parts/``: one record per complete shard."""
        return self.root / PARTS_DIR

    @property
    def staging(self) -> Path:
        """``.staging/``: the attempts' folders of unfinished tars."""
        return self.root / STAGING_DIR

    @property
    def previews(self) -> Path:
        """``previews/``: contact sheets."""
        return self.root / PREVIEWS_DIR

    def shard(self, name: str) -> Path:
        """The tar ``name`` (a :func:`shard_name`)."""
        return self.root / name

    def part(self, name: str) -> Path:
        """``parts/<shard stem>.json``: the record of shard ``name``, written right after its tar."""
        return self.parts / (Path(name).stem + ".json")

    def preview(self, number: int) -> Path:
        """Contact sheet ``number`` (0-based) under ``previews/``."""
        return self.previews / PREVIEW_PATTERN.format(number)

    def new_attempt(self, index: int) -> Path:
        """A staging folder no other attempt at shard ``index`` uses (pid and clock in its name)."""
        return self.staging / f"{index:06d}-{os.getpid()}-{time.time_ns()}"

    def fault_marker(self, index: int) -> Path:
        """Default marker file of an injected fault in shard ``index`` (``c2p.shards.faults``)."""
        return self.root / FAULT_MARKER_PATTERN.format(index)

    def shard_tars(self) -> list[Path]:
        """Every ``shard-*.tar`` present, sorted by name (complete or not: see ``index.json``)."""
        return sorted(self.root.glob(SHARD_GLOB))

    def tmp_files(self) -> list[Path]:
        """Files left half-written by a crash: ``*.tmp`` at the top and under ``parts/``."""
        return (sorted(self.root.glob("*" + TMP_SUFFIX)) + sorted(self.parts.glob("*" + TMP_SUFFIX))
                + sorted(self.generations.glob("*" + TMP_SUFFIX)))

    def job_files(self) -> list[Path]:
        """Everything a render job writes here that exists now (``job.overwrite`` deletes these and nothing else)."""
        named = [self.plan, self.generations, self.index, self.errors, self.warnings, self.config, self.parts, self.previews,
                 self.staging]
        found = [p for p in named if p.exists()]
        found += self.shard_tars() + sorted(self.root.glob("*" + TMP_SUFFIX))
        found += sorted(self.root.glob(FAULT_MARKER_PATTERN.format("*")))
        return found


def list_shard_tars(root: str | os.PathLike) -> list[str]:
    """Every ``shard-*.tar`` directly in ``root``, sorted by name: the paths of a local shard directory
    (:meth:`ShardDir.shard_tars`), or the addresses under an ``s3://`` prefix (one listing; a missing
    prefix or bucket lists nothing). Raises ValueError for a malformed address
    (:func:`c2p.storage.check_url`), StorageError naming the prefix when the listing fails."""
    if not storage.is_remote(root):
        return [str(p) for p in ShardDir(Path(root)).shard_tars()]
    storage.check_url(str(root), "prefix")
    return [storage.join(root, name) for name in sorted(storage.list_names(root)) if fnmatch.fnmatchcase(name, SHARD_GLOB)]
