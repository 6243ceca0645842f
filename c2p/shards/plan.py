"""The deterministic render plan: which objects go into which shard, under which settings.

A plan is a pure function of the corpus listing, the render settings and the plan already
recorded in the output directory. Objects are put in a pseudo-random order keyed by (job
seed, corpus, uid) (:func:`shard_order_key`) and cut into shards of ``job.shard_size``, so
every shard is a fair sample of the corpus. Uids cluster by class and source (ShapeNet's
``<synset>-<model>``, Objaverse's upload batches): cut in uid order, a shard would hold one or
two classes, and the pre-training stream, which reads a few shards at a time into its shuffle
buffer, would fill batches with same-class objects, the in-batch negatives NT-Xent learns from.

A plan grows by **generations**: the first run plans every listed object (generation 0); a
re-run on a grown listing keeps every shard of the earlier generations as it was planned and
cuts only the objects no generation holds yet into new shards after the last one (themselves
in keyed order). Objects that left the listing keep their place (``ShardSpec.missing``), so a
finished shard is never re-cut. The label list grows the same way: new classes are appended,
so the label indices already written into shards stay valid. Together with per-object seeding
(:func:`object_seed`) and the schema's fixed tar headers, re-rendering a shard gives the same
bytes — which is what lets a re-run skip finished shards and render only the missing ones.
``plan.json`` and the generations' uid lists are :mod:`c2p.shards.record`'s.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from c2p.config.render import RenderJobConfig
from c2p.corpora import ErrorRecord, ObjectRef
from c2p.schema import SCHEMA_VERSION, make_key
from c2p.sharddir import shard_name

if TYPE_CHECKING:
    from c2p.shards.record import PlanRecord

# Bumped whenever the shard task (c2p.shards.objects, c2p.shards.task) changes what it writes
# for the same settings (points, views, meta): an output written by an older renderer is then
# refused instead of silently mixed.
RENDERER_VERSION = "c2p-shards-1"
# How objects are ordered into shards; part of the settings, so an output cut another way is
# refused with the reason instead of being mixed with this plan's shards.
SHARD_ORDER = "keyed-hash-1"


# Bytes of the order key kept per object: 128 bits, so two objects of a 10^8-object corpus
# share a key with probability ~1e-23 (keys identify a generation's objects in its uid list).
KEY_BYTES = 16
# Objects handled per step where a per-object Python list would otherwise span the whole corpus.
CHUNK = 1 << 16


@dataclass(frozen=True)
class ShardSpec:
    """Shard ``index`` of plan generation ``generation``: the objects it holds, in write order.

    ``fingerprint`` is its generation's (:attr:`Generation.fingerprint`); the shard's ``parts/``
    record carries it, and a re-run trusts a finished shard only when they match. ``missing``:
    uids planned into this shard that the corpus no longer lists (an unfinished shard records
    them as errors; a finished one keeps them).
    """

    index: int
    refs: tuple[ObjectRef, ...]
    generation: int = 0
    fingerprint: str = ""
    missing: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return shard_name(self.index)


@dataclass(frozen=True)
class Generation:
    """The objects one run added to the plan: shards ``first_shard .. first_shard + shards - 1``.

    fingerprint: sha256 (16 hex) of the settings, the label list and the generation's ordered
    objects (uid, label, label index, source, caption); created: UTC time it was planned (ISO 8601).
    """

    number: int
    first_shard: int
    shards: int
    objects: int
    fingerprint: str
    created: str

    def to_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> "Generation":
        return cls(**{f.name: rec[f.name] for f in dataclasses.fields(cls)})


@dataclass
class RenderPlan:
    """Objects cut into shards, the settings they are rendered with, and what could not be listed.

    ``generations``: oldest first; the last one is new in this run when ``new_generation``.
    ``fingerprint``: sha256 (16 hex) of the generations' fingerprints: two plans with the same
    fingerprint produce byte-identical shards. ``vanished``: uids planned earlier that the
    corpus no longer lists (they stay in their shards).
    """

    corpus: str
    settings: dict[str, Any]
    labels: list[str]
    shards: list[ShardSpec]
    generations: list[Generation]
    listing_errors: list[dict[str, Any]] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    new_generation: bool = True

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(",".join(g.fingerprint for g in self.generations).encode()).hexdigest()[:16]

    @property
    def total_objects(self) -> int:
        """Objects planned into shards, in every generation (vanished ones included)."""
        return sum(g.objects for g in self.generations)

    def new_uids(self) -> list[str]:
        """Uids of the generation this run added, in plan order ([] when it added none)."""
        if not self.new_generation:
            return []
        last = self.generations[-1]
        return [r.uid for s in self.shards[last.first_shard:] for r in s.refs]


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


def order_keys(corpus: str, uids: list[str], seed: int) -> np.ndarray:
    """[N] ``S16`` array: the first :data:`KEY_BYTES` of :func:`shard_order_key` per uid.

    ``S16`` compares as bytes (keys are fixed-length, so numpy's trailing-NUL rule cannot merge
    two keys), which makes ``np.argsort``/``np.searchsorted`` order objects exactly as the plan does.
    """
    keys = np.empty(len(uids), dtype=f"S{KEY_BYTES}")
    for start in range(0, len(uids), CHUNK):  # chunks: no list of 10^7 digests at once
        part = uids[start : start + CHUNK]
        keys[start : start + len(part)] = np.frombuffer(
            b"".join([shard_order_key(seed, corpus, u)[:KEY_BYTES] for u in part]), dtype=f"S{KEY_BYTES}")
    return keys


def unique_refs(refs: list[ObjectRef]) -> tuple[list[ObjectRef], list[dict[str, Any]]]:
    """``refs`` without objects whose sample key repeats another one's (same uid, or uids that
    differ only in characters the key replaces: they would be written twice under one key),
    nor uids with a line break (the generations' uid lists hold one uid per line).

    Of the refs sharing a key, the one first by (uid, source) is kept, whatever the listing
    order. Returns ``(kept refs in listing order, error records)``. Duplicates are found through
    a 64-bit hash of the key and confirmed on the key itself, so no set of 10^7 strings is built.
    """
    errors = [error_record(r.corpus, r.uid, r.source, "plan", "BadUid", "uid contains a line break")
              for r in refs if "\n" in r.uid or "\r" in r.uid]
    if errors:
        refs = [r for r in refs if "\n" not in r.uid and "\r" not in r.uid]
    hashes = np.fromiter((hash(make_key(r.corpus, r.uid)) for r in refs), dtype=np.int64, count=len(refs))
    values, counts = np.unique(hashes, return_counts=True)
    suspects = np.flatnonzero(np.isin(hashes, values[counts > 1]))
    groups: dict[str, list[int]] = {}
    for i in suspects.tolist():
        groups.setdefault(make_key(refs[i].corpus, refs[i].uid), []).append(i)
    dropped: set[int] = set()
    for members in groups.values():
        members.sort(key=lambda i: (refs[i].uid, refs[i].source))
        dropped.update(members[1:])
    for i in sorted(dropped, key=lambda i: (refs[i].uid, refs[i].source)):
        r = refs[i]
        errors.append(error_record(r.corpus, r.uid, r.source, "plan", "DuplicateKey",
                                   f"sample key {make_key(r.corpus, r.uid)!r} already taken by an earlier object"))
    kept = [r for i, r in enumerate(refs) if i not in dropped] if dropped else list(refs)
    return kept, errors


def cut_shards(ordered: list[ObjectRef], shard_size: int, first_index: int = 0, generation: int = 0,
               fingerprint: str = "") -> list[ShardSpec]:
    """``ordered`` cut into shards of ``shard_size`` numbered from ``first_index`` (the last may be short)."""
    if shard_size < 1:
        raise ValueError(f"shard_size: {shard_size}; expected >= 1")
    return [ShardSpec(first_index + i // shard_size, tuple(ordered[i : i + shard_size]), generation, fingerprint)
            for i in range(0, len(ordered), shard_size)]


def make_plan(cfg: RenderJobConfig, refs: list[ObjectRef], listing_errors: list[ErrorRecord], labels: list[str],
              previous: "PlanRecord | None" = None, created: str = "") -> RenderPlan:
    """The plan of a job from the corpus listing and the plan already recorded in ``cfg.out``.

    Without ``previous`` every listed object goes into generation 0. With it, the recorded
    generations keep their shards (objects matched by key; the listing supplies their refs),
    and the objects no generation holds form one new generation (none when there are none).
    ``corpus.limit`` caps the objects of all generations together; a generation takes the first
    objects of its keyed order: a fair sample of the corpus, not its first classes.
    ``created``: the new generation's timestamp (default: now, UTC).
    """
    refs, errors = unique_refs(refs)
    errors = [error_record(e.corpus, e.uid, e.source, "list", "CorpusError", e.reason) for e in listing_errors] + errors
    settings = render_settings(cfg)
    seed, size = cfg.job.seed, cfg.job.shard_size
    plan_labels = list(previous.labels) if previous else []
    plan_labels += [l for l in labels if l not in set(plan_labels)]
    refs = _relabel(refs, labels, plan_labels)
    keys = order_keys(cfg.corpus.name, [r.uid for r in refs], seed)
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    taken = np.zeros(len(refs), dtype=bool)
    shards: list[ShardSpec] = []
    generations: list[Generation] = []
    vanished: list[str] = []
    for gen in previous.generations if previous else []:
        gen_keys = previous.ordered_keys(gen, seed)
        pos = np.searchsorted(gen_keys, keys).clip(max=max(len(gen_keys) - 1, 0))
        hit = (gen_keys[pos] == keys) if len(gen_keys) else np.zeros(len(keys), dtype=bool)
        taken |= hit
        slots: list[ObjectRef | None] = [None] * gen.objects
        hit_pos, hit_ref = pos[hit], order[hit]
        for start in range(0, len(hit_pos), CHUNK):
            for p, i in zip(hit_pos[start : start + CHUNK].tolist(), hit_ref[start : start + CHUNK].tolist()):
                slots[p] = refs[i]
        lost = [p for p, r in enumerate(slots) if r is None]
        lost_uids = dict(zip(lost, previous.uids(gen, lost)))
        vanished += lost_uids.values()
        for s in range(gen.shards):
            part = slots[s * size : (s + 1) * size]
            shards.append(ShardSpec(gen.first_shard + s, tuple(r for r in part if r is not None), gen.number, gen.fingerprint,
                                    tuple(lost_uids[s * size + j] for j, r in enumerate(part) if r is None)))
        generations.append(gen)
    fresh = _take(refs, order[~taken])
    room = cfg.corpus.limit - sum(g.objects for g in generations) if cfg.corpus.limit else len(fresh)
    fresh = fresh[: max(room, 0)]
    new = bool(fresh) or not generations
    if new:
        number, first = len(generations), sum(g.shards for g in generations)
        fp = generation_fingerprint(settings, plan_labels, fresh)
        new_shards = cut_shards(fresh, size, first, number, fp)
        shards += new_shards
        generations.append(Generation(number, first, len(new_shards), len(fresh), fp, created or _utc_now()))
    return RenderPlan(corpus=cfg.corpus.name, settings=settings, labels=plan_labels, shards=shards, generations=generations,
                      listing_errors=errors, vanished=vanished, new_generation=new)


def generation_fingerprint(settings: dict[str, Any], labels: list[str], ordered: list[ObjectRef]) -> str:
    """sha256 (16 hex) of everything a generation's sample bytes depend on besides the renderer:
    the settings, the label list and its objects in order (label, label index, source and
    caption go into ``meta.json``)."""
    h = hashlib.sha256(json.dumps([settings, list(labels)], sort_keys=True).encode())
    for start in range(0, len(ordered), 4096):
        h.update("".join(f"{r.uid}\x1f{r.label}\x1f{r.label_index}\x1f{r.source}\x1f{r.caption}\x1e"
                         for r in ordered[start : start + 4096]).encode())
    return h.hexdigest()[:16]


def _take(refs: list[ObjectRef], positions: np.ndarray) -> list[ObjectRef]:
    """``[refs[i] for i in positions]``, converting ``positions`` to Python ints a chunk at a time."""
    out: list[ObjectRef] = []
    for start in range(0, len(positions), CHUNK):
        out.extend([refs[i] for i in positions[start : start + CHUNK].tolist()])
    return out


def _relabel(refs: list[ObjectRef], corpus_labels: list[str], plan_labels: list[str]) -> list[ObjectRef]:
    """``refs`` with label indices into ``plan_labels`` (which extends an earlier label list)."""
    if list(corpus_labels) == plan_labels:
        return refs
    index = {l: i for i, l in enumerate(plan_labels)}
    return [r if index.get(r.label) == r.label_index else dataclasses.replace(r, label_index=index[r.label]) for r in refs]


def _utc_now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def error_record(corpus: str, uid: str, source: str, stage: str, error: str, reason: str) -> dict[str, Any]:
    """One line of ``errors.jsonl``: which object, where it came from, at which stage it failed and why."""
    return {"corpus": corpus, "uid": uid, "source": str(source), "stage": stage, "error": error, "reason": reason}
