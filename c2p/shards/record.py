"""``plan.json`` and the generations' uid lists: the plan that owns a shard directory.

    out/plan.json                      settings, labels, generations, per-shard counts (small:
                                       ~100 bytes a shard, so 40,000 shards read in well under a second)
    out/generations/gen-0000.uids      generation 0's uids, one a line, in plan order: line i is
                                       object i of the generation, in shard first_shard + i // shard_size

A re-run reads them to keep every recorded generation's shards as they were planned
(:func:`c2p.shards.plan.make_plan`) and answers "which objects came in which run". A uid list
is written (atomically) before the ``plan.json`` that names it, so a ``plan.json`` never
points at a missing list. Settings that differ from the recorded ones are refused
(:class:`PlanMismatch`) instead of mixing two renders in one directory, unless
``job.overwrite=true``; a grown or shrunk listing is not a mismatch, it is a new generation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from c2p.config.core import config_diff
from c2p.fileio import atomic_write_bytes, atomic_write_chunks
from c2p.schema import SCHEMA_VERSION
from c2p.sharddir import ShardDir
from c2p.shards.plan import KEY_BYTES, Generation, RenderPlan, order_keys

# Version of plan.json's layout; a record of another version is refused with the reason.
PLAN_FORMAT = 2


class PlanMismatch(ValueError):
    """The output directory holds shards of another plan (other settings, or not a render job's output)."""


@dataclass
class PlanRecord:
    """What ``plan.json`` in ``root`` records (see :func:`plan_record`)."""

    root: Path
    corpus: str
    settings: dict[str, Any]
    labels: list[str]
    generations: list[Generation]

    def uid_file(self, gen: Generation) -> Path:
        return ShardDir(self.root).generation_uids(gen.number)

    def _chunks(self, gen: Generation, size: int = 1 << 16) -> Iterator[list[str]]:
        """Generation ``gen``'s uids in plan order, ``size`` at a time (the list is read as a
        stream: 10^7 uids never sit in memory as one list of strings)."""
        path = self.uid_file(gen)
        count = 0
        try:
            with open(path, encoding="utf-8", newline="\n") as f:
                while chunk := [line.rstrip("\n") for _, line in zip(range(size), f)]:
                    count += len(chunk)
                    yield chunk
        except OSError as e:
            raise PlanMismatch(f"{path}: generation {gen.number}'s uid list is unreadable ({e}); expected the file a render "
                               "job wrote (job.overwrite=true starts over)") from e
        if count != gen.objects:
            raise PlanMismatch(f"{path}: {count} uids; expected {gen.objects}, as plan.json records for generation "
                               f"{gen.number} (job.overwrite=true starts over)")

    def ordered_keys(self, gen: Generation, seed: int) -> np.ndarray:
        """[objects] ``S16`` order keys of generation ``gen``, in plan order (which is key order)."""
        keys = np.concatenate([order_keys(self.corpus, chunk, seed) for chunk in self._chunks(gen)] or
                              [np.empty(0, dtype=f"S{KEY_BYTES}")])
        if len(keys) > 1 and not (keys[1:] > keys[:-1]).all():
            raise PlanMismatch(f"{self.uid_file(gen)}: uids are not in the plan's keyed order for job.seed={seed}; "
                               "expected the list a render job with these settings wrote")
        return keys

    def uids(self, gen: Generation, positions: list[int]) -> list[str]:
        """The uids at ``positions`` (0-based, in plan order) of generation ``gen``."""
        if not positions:
            return []
        wanted, found, offset = set(positions), {}, 0
        for chunk in self._chunks(gen):
            found.update((offset + j, u) for j, u in enumerate(chunk) if offset + j in wanted)
            offset += len(chunk)
        return [found[p] for p in positions]


def read_plan_record(out: str | Path) -> PlanRecord | None:
    """The plan recorded in ``out``, or None when there is no ``plan.json``. Raises
    :class:`PlanMismatch` when it exists but cannot be read or has another layout."""
    path = ShardDir(out).plan
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
        if rec.get("format") != PLAN_FORMAT:
            raise PlanMismatch(f"{path}: plan format {rec.get('format', 1)!r}; expected {PLAN_FORMAT} (written by an older "
                               "render job, before plans had generations): re-run with job.overwrite=true to start over")
        return PlanRecord(Path(out), rec["corpus"], rec["settings"], list(rec["labels"]),
                          [Generation.from_record(g) for g in rec["generations"]])
    except PlanMismatch:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PlanMismatch(f"{path}: unreadable plan record ({type(e).__name__}: {e}); expected the JSON written by a render job "
                           "(re-run with job.overwrite=true to start over)") from e


def check_settings(out: str | Path, previous: PlanRecord | None, settings: dict[str, Any]) -> None:
    """Refuse to add to ``out`` when its recorded plan has other render settings.

    Raises :class:`PlanMismatch` naming the settings that differ.
    """
    if previous is None or previous.settings == settings:
        return
    diffs = config_diff(previous.settings, settings)
    what = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs[:8]) or "settings differ"
    raise PlanMismatch(f"output {out} holds shards of another plan: render settings differ ({what}); expected the same "
                       "settings to resume or grow it, or job.overwrite=true to delete them and start over")


def plan_record(plan: RenderPlan) -> dict[str, Any]:
    """What ``plan.json`` holds: identity, settings, labels, generations and per-shard counts
    (not every uid: those are in the generations' uid lists)."""
    return {
        "format": PLAN_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "corpus": plan.corpus,
        "fingerprint": plan.fingerprint,
        "settings": plan.settings,
        "labels": plan.labels,
        "objects": plan.total_objects,
        "generations": [g.to_record() for g in plan.generations],
        "shards": [[s.name, len(s.refs) + len(s.missing), s.generation] for s in plan.shards],
    }


def write_plan_record(out: str | Path, plan: RenderPlan) -> Path:
    """Record ``plan`` as the owner of ``out``: the new generation's uid list, then ``plan.json``
    (each atomically); returns the path of ``plan.json``."""
    shard_dir = ShardDir(out)
    if plan.new_generation:
        gen = plan.generations[-1]
        path = shard_dir.generation_uids(gen.number)
        path.parent.mkdir(parents=True, exist_ok=True)
        uids = plan.new_uids()
        atomic_write_chunks(path, ("".join([u + "\n" for u in uids[i : i + 65536]]).encode("utf-8")
                                   for i in range(0, len(uids), 65536)))
    atomic_write_bytes(shard_dir.plan, json.dumps(plan_record(plan), indent=None, sort_keys=True).encode())
    return shard_dir.plan


def generation_table(plan: RenderPlan) -> list[dict[str, Any]]:
    """Per generation: number, created, objects, shard range, for summaries."""
    return [{"generation": g.number, "created": g.created, "objects": g.objects,
             "shards": f"{g.first_shard}-{g.first_shard + g.shards - 1}" if g.shards else "none"} for g in plan.generations]
