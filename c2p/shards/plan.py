"""The deterministic render plan: which objects go into which shard, under which settings.

A plan is a pure function of the corpus listing and the render settings: objects are put in
a pseudo-random order keyed by (job seed, corpus, uid) (:func:`shard_order_key`) and cut into
shards of ``job.shard_size``, so shard *i* always holds the same objects, and every shard is a
fair sample of the corpus. Uids cluster by class and source (ShapeNet's ``<synset>-<model>``,
Objaverse's upload batches): cut in uid order, a shard would hold one or two classes, and the
pre-training stream, which reads a few shards at a time into its shuffle buffer, would fill
batches with same-class objects, the in-batch negatives NT-Xent learns from. Together with
per-object seeding (:func:`object_seed`) and the schema's fixed tar headers, re-rendering a
shard gives the same bytes — which is what lets a re-run skip finished shards and render only
the missing ones.

The plan's identity is recorded in ``plan.json`` in the output directory when a job starts;
a later run with other settings (or another listing) is refused instead of mixing two
renders into one directory, unless ``job.overwrite=true``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from c2p.config.core import config_diff
from c2p.config.render import RenderJobConfig
from c2p.corpora import ErrorRecord, ObjectRef
from c2p.fileio import atomic_write_bytes
from c2p.schema import SCHEMA_VERSION, make_key
from c2p.sharddir import ShardDir, shard_name

# Bumped whenever the shard task (c2p.shards.objects, c2p.shards.task) changes what it writes
# for the same settings (points, views, meta): an output written by an older renderer is then
# refused instead of silently mixed.
RENDERER_VERSION = "c2p-shards-1"
# How objects are ordered into shards; part of the settings, so an output cut another way is
# refused with the reason instead of being mixed with this plan's shards.
SHARD_ORDER = "keyed-hash-1"


@dataclass(frozen=True)
class ShardSpec:
    """Shard ``index``: the objects it holds, in write order (the plan's keyed order)."""

    index: int
    refs: tuple[ObjectRef, ...]

    @property
    def name(self) -> str:
        return shard_name(self.index)


@dataclass
class RenderPlan:
    """Objects cut into shards, the settings they are rendered with, and what could not be listed.

    ``fingerprint``: sha256 (16 hex) of the settings, the label list and every shard's
    ordered refs; two plans with the same fingerprint produce byte-identical shards.
    """

    corpus: str
    settings: dict[str, Any]
    labels: list[str]
    shards: list[ShardSpec]
    listing_errors: list[dict[str, Any]] = field(default_factory=list)
    fingerprint: str = ""

    @property
    def total_objects(self) -> int:
        return sum(len(s.refs) for s in self.shards)

    def to_record(self) -> dict[str, Any]:
        """What ``plan.json`` holds: identity, settings and per-shard extents (not every uid:
        an Objaverse-sized plan would be hundreds of MB)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "corpus": self.corpus,
            "fingerprint": self.fingerprint,
            "settings": self.settings,
            "objects": self.total_objects,
            "shards": [
                {"name": s.name, "objects": len(s.refs), "first": s.refs[0].uid, "last": s.refs[-1].uid}
                for s in self.shards
            ],
        }


def render_settings(cfg: RenderJobConfig) -> dict[str, Any]:
    """The settings that determine the bytes of the shards (and nothing else).

    Resources, retries, concurrency, previews and the output path are left out: changing
    them between runs must not invalidate finished shards. The corpus root is in because
    ``meta.json`` records each object's source path.
    """
    return {
        "renderer": RENDERER_VERSION,
        "schema_version": SCHEMA_VERSION,
        "corpus": {
            "name": cfg.corpus.name,
            "root": str(Path(cfg.corpus.root).expanduser().resolve()),
            "split": cfg.corpus.split,
            "limit": cfg.corpus.limit,
            "options": dict(sorted(cfg.corpus.options.items())),
        },
        "views": dataclasses.asdict(cfg.views),
        "imgfeat": {"model": cfg.imgfeat.model, "pretrained": cfg.imgfeat.pretrained, "tag": feature_tag(cfg)},
        "shard_size": cfg.job.shard_size,
        "order": SHARD_ORDER,
        "points": cfg.job.points,
        "seed": cfg.job.seed,
    }


def feature_tag(cfg: RenderJobConfig) -> str:
    """Tag of ``imgfeat.<tag>.npy`` members: ``imgfeat.tag`` or the model name; "" when off."""
    if not cfg.imgfeat.model:
        return ""
    return cfg.imgfeat.tag or cfg.imgfeat.model


def object_seed(seed: int, corpus: str, uid: str) -> int:
    """Per-object render seed in [0, 2^31): a hash of (job seed, corpus, uid).

    It depends on nothing else — not the shard, the worker or the attempt — so a retried or
    re-run shard renders every object identically.
    """
    digest = hashlib.sha256(f"{seed}/{corpus}/{uid}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def shard_order_key(seed: int, corpus: str, uid: str) -> bytes:
    """Where an object goes in the plan's order: a keyed hash of (job seed, corpus, uid).

    A function of the object alone, not of the rest of the listing, so an object keeps its
    place relative to every other object whatever else the corpus holds; the ``order/`` domain
    keeps it independent of :func:`object_seed`.
    """
    return hashlib.sha256(f"order/{seed}/{corpus}/{uid}".encode()).digest()


def unique_refs(refs: list[ObjectRef]) -> tuple[list[ObjectRef], list[dict[str, Any]]]:
    """``refs`` without objects whose sample key repeats an earlier one by (uid, source) (same
    uid, or uids that differ only in characters the key replaces: they would be written twice
    under one key); returns ``(unique refs sorted by uid, duplicate error records)``."""
    seen: set[str] = set()
    unique: list[ObjectRef] = []
    duplicates: list[dict[str, Any]] = []
    for ref in sorted(refs, key=lambda r: (r.uid, r.source)):
        key = make_key(ref.corpus, ref.uid)
        if key in seen:
            duplicates.append(error_record(ref.corpus, ref.uid, ref.source, "plan", "DuplicateKey", f"sample key {key!r} already taken by an earlier object"))
            continue
        seen.add(key)
        unique.append(ref)
    return unique, duplicates


def assign_shards(refs: list[ObjectRef], shard_size: int, seed: int = 0, limit: int = 0) -> list[ShardSpec]:
    """Order ``refs`` by :func:`shard_order_key`, keep the first ``limit`` (0: all) and cut them
    into shards of ``shard_size`` (the last may be short). ``refs`` must hold each sample key
    once (:func:`unique_refs`)."""
    if shard_size < 1:
        raise ValueError(f"shard_size: {shard_size}; expected >= 1")
    ordered = sorted(refs, key=lambda r: (shard_order_key(seed, r.corpus, r.uid), r.uid))
    if limit:
        ordered = ordered[:limit]
    return [ShardSpec(i // shard_size, tuple(ordered[i : i + shard_size])) for i in range(0, len(ordered), shard_size)]


def make_plan(cfg: RenderJobConfig, refs: list[ObjectRef], listing_errors: list[ErrorRecord], labels: list[str]) -> RenderPlan:
    """The plan of a job from the corpus listing. ``corpus.limit`` keeps the first objects of
    the plan's order: a fair sample of the corpus, not its first classes."""
    refs, duplicates = unique_refs(refs)
    shards = assign_shards(refs, cfg.job.shard_size, cfg.job.seed, cfg.corpus.limit)
    errors = [error_record(e.corpus, e.uid, e.source, "list", "CorpusError", e.reason) for e in listing_errors] + duplicates
    settings = render_settings(cfg)
    # Everything a sample's bytes depend on besides the settings: the refs (label, label
    # index, source, caption go into meta.json) and the label list.
    h = hashlib.sha256(json.dumps([settings, list(labels)], sort_keys=True).encode())
    for spec in shards:
        h.update(f"\n{spec.index}:".encode())
        h.update(json.dumps([dataclasses.astuple(r) for r in spec.refs]).encode())
    return RenderPlan(
        corpus=cfg.corpus.name, settings=settings, labels=list(labels), shards=shards,
        listing_errors=errors, fingerprint=h.hexdigest()[:16],
    )


def error_record(corpus: str, uid: str, source: str, stage: str, error: str, reason: str) -> dict[str, Any]:
    """One line of ``errors.jsonl``: which object, where it came from, at which stage it failed and why."""
    return {"corpus": corpus, "uid": uid, "source": str(source), "stage": stage, "error": error, "reason": reason}


# ----------------------------------------------------------------------------- plan.json


class PlanMismatch(ValueError):
    """The output directory holds shards of another plan (other settings or another listing)."""


def read_plan_record(out: str | Path) -> dict[str, Any] | None:
    """The ``plan.json`` record in ``out`` (see :meth:`RenderPlan.to_record`), or None when there is none.
    Raises :class:`PlanMismatch` when it exists but cannot be read."""
    path = ShardDir(out).plan
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PlanMismatch(f"{path}: unreadable plan record ({type(e).__name__}: {e}); expected the JSON written by a render job "
                           "(re-run with job.overwrite=true to start over)") from e


def check_plan(out: str | Path, plan: RenderPlan) -> None:
    """Refuse to write ``plan`` into ``out`` when ``out`` holds another plan's shards.

    Raises :class:`PlanMismatch` naming the settings that differ (or saying the listing
    changed when only the objects differ).
    """
    old = read_plan_record(out)
    if old is None or old.get("fingerprint") == plan.fingerprint:
        return
    diffs = config_diff(old.get("settings", {}), plan.settings)
    if diffs:
        what = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs[:8])
        reason = f"render settings differ ({what})"
    else:
        reason = f"the corpus listing changed ({old.get('objects')} -> {plan.total_objects} objects, or other uids)"
    raise PlanMismatch(f"output {out} holds shards of another plan: {reason}; expected the same settings and corpus "
                       "to resume, or job.overwrite=true to delete them and start over")


def write_plan_record(out: str | Path, plan: RenderPlan) -> Path:
    """Record ``plan`` as the owner of ``out`` (``plan.json``, atomically); returns its path."""
    path = ShardDir(out).plan
    atomic_write_bytes(path, json.dumps(plan.to_record(), indent=1, sort_keys=True).encode())
    return path
