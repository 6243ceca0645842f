"""One shard task: render its objects in uid order, write the tar, record the shard in ``parts/``.

:func:`render_shard` is a plain function (the Ray job in :mod:`c2p.shards.job` wraps it in a
task) so it can be run and tested without a cluster. For every object of the shard:

1. load, sample points, render views and depth (:func:`c2p.shards.objects.render_object`);
2. optional ``imgfeat.<tag>.npy`` from the feature actors (:mod:`c2p.shards.features`);
3. encode (:func:`c2p.shards.objects.encode_object`) and write with
   :class:`~c2p.schema.ShardWriter` (tmp name, fsync, atomic rename) into a per-attempt
   staging folder, then rename the tar into the output directory. By default steps 2–3 run
   in the writer thread (:mod:`c2p.shards.sink`, ``job.write_thread``) while step 1 goes on
   with the next object.

Every random draw comes from a generator seeded by :func:`~c2p.shards.plan.object_seed`, so
the same shard renders to the same bytes on every attempt. An object that fails becomes an
error record and the shard completes without it; anything else (the output disk, a dead
feature actor) raises and Ray retries the whole shard.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from c2p.config.render import RenderJobConfig
from c2p.fileio import atomic_write_bytes
from c2p.schema import ShardWriter
from c2p.sharddir import ShardDir
from c2p.shards.faults import die_if_due, parse_fault
from c2p.shards.objects import ObjectFailure, RenderedObject, encode_object, render_object
from c2p.shards.plan import ShardSpec, error_record, feature_tag
from c2p.shards.sink import SampleSink

# Feature requests in flight per shard: enough to keep a feature actor busy while the next
# object renders, few enough that un-encoded views do not pile up in the object store.
FEATURE_WINDOW = 4
STAGES = ("load", "points", "render", "features", "encode", "write")


@dataclass
class ShardResult:
    """What a shard task reports back to the driver (also stored, minus timings, in ``parts/``)."""

    index: int
    name: str
    fingerprint: str
    samples: int
    bytes: int
    errors: list[dict[str, Any]] = field(default_factory=list)  # objects left out, and why
    warnings: list[dict[str, Any]] = field(default_factory=list)  # objects written with a fallback (missing texture)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage, summed over objects
    host: str = ""  # the host name of the worker that rendered it (differs per attempt, so not in parts/)

    def part_record(self) -> dict[str, Any]:
        """The ``parts/<shard>.json`` record: everything but the timings and the host, which differ per attempt."""
        return {"index": self.index, "name": self.name, "fingerprint": self.fingerprint,
                "samples": self.samples, "bytes": self.bytes, "errors": self.errors, "warnings": self.warnings}


def read_part(out: str | Path, name: str) -> dict[str, Any] | None:
    """The ``parts/`` record of shard ``name`` in ``out`` (see :meth:`ShardResult.part_record`),
    or None when it is missing or unreadable. A shard is complete when its tar and this record
    both exist: the record is written right after the tar is renamed into place, so a crash
    between the two only costs re-rendering that shard."""
    try:
        return json.loads(ShardDir(out).part(name).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def render_shard(spec: ShardSpec, cfg: RenderJobConfig, *, feature_actors: list | None = None,
                 device_index: int | None = None, fault: str = "", upload: str = "") -> ShardResult:
    """Render shard ``spec`` into ``<cfg.out>/<spec.name>`` and its ``parts/`` record.

    feature_actors: Ray handles of :class:`c2p.shards.features.ImageFeatureEncoder` actors (the
    one used is picked by shard index), or None for no ``imgfeat``. device_index: GPU for the
    EGL context (None: the default device, llvmpipe on CPU nodes). fault: a ``C2P_FAULT_INJECT``
    spec (:func:`~c2p.shards.faults.parse_fault`). upload: the ``s3://`` output the finished
    shard is uploaded to (``cfg.out`` is then the local stage: :mod:`c2p.shards.remote`). With ``cfg.job.write_thread`` samples are
    encoded and written by a :class:`~c2p.shards.sink.SampleSink` thread while the next objects
    render. Returns the :class:`ShardResult`; raises only for errors that are not the objects' fault.
    """
    t_start = time.perf_counter()
    out = ShardDir(cfg.out)
    fault_cfg = parse_fault(fault)
    from c2p.camera import views as view_set

    view_angles = view_set(cfg.views.set).numpy().astype(np.float64)
    tag = feature_tag(cfg)
    actor = feature_actors[spec.index % len(feature_actors)] if (feature_actors and tag) else None
    timings = {k: 0.0 for k in STAGES}
    errors: list[tuple[int, dict[str, Any]]] = []  # (position in the shard, record): sorted at the end
    warnings: list[dict[str, Any]] = []

    staging = out.new_attempt(spec.index)
    staging.mkdir(parents=True)
    writer = ShardWriter(staging / spec.name)

    def write_one(item: tuple[int, RenderedObject, Any]) -> None:
        pos, obj, ref = item
        feats = None
        if ref is not None:
            import ray

            t = time.perf_counter()
            feats = {tag: ray.get(ref)}
            timings["features"] += time.perf_counter() - t
        t = time.perf_counter()
        try:
            sample = encode_object(obj, feats, cfg.views.image_format)
        except ValueError as e:
            errors.append((pos, error_record(obj.meta.corpus, obj.meta.uid, obj.meta.source, "encode", "ValueError", str(e))))
            return
        t2 = time.perf_counter()
        writer.write(sample)
        warnings.extend(error_record(obj.meta.corpus, obj.meta.uid, obj.meta.source, "render", "Fallback", w)
                        for w in obj.warnings)
        timings["encode"] += t2 - t
        timings["write"] += time.perf_counter() - t2
        die_if_due(fault_cfg, spec.index, writer.count, out.root)

    # Feature requests in flight: enough to keep a feature actor busy while the next object
    # renders; without features the thread needs one object queued behind the one it encodes,
    # and in line each object is written at once.
    held = FEATURE_WINDOW if actor is not None else 2 if cfg.job.write_thread else 0
    sink = SampleSink(write_one, threaded=cfg.job.write_thread, depth=held)
    try:
        for pos, ref in enumerate(spec.refs):
            try:
                obj = render_object(ref, cfg, view_angles, device_index, timings)
            except ObjectFailure as f:
                errors.append((pos, error_record(ref.corpus, ref.uid, ref.source, f.stage, f.error, f.reason)))
                continue
            feature_ref = actor.encode.remote(obj.rgb) if (actor is not None and obj.rgb is not None) else None
            sink.put((pos, obj, feature_ref))
        sink.close()
        t = time.perf_counter()
        writer.close()
        os.replace(staging / spec.name, out.shard(spec.name))
    except BaseException:
        sink.stop()
        writer.abort()
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = out.shard(spec.name).stat().st_size
    # Planned objects the corpus no longer lists come first: they fail before any rendering.
    records = [error_record(cfg.corpus.name, uid, "", "list", "Vanished", f"planned into this shard (plan generation "
                            f"{spec.generation}) but no longer listed by the corpus") for uid in spec.missing]
    records += [rec for _, rec in sorted(errors, key=lambda e: e[0])]
    result = ShardResult(spec.index, spec.name, spec.fingerprint, writer.count, size, records, warnings, host=socket.gethostname())
    out.parts.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out.part(spec.name), json.dumps(result.part_record(), indent=1, sort_keys=True).encode())
    if upload:  # the output is in object storage: this worker uploads its own shard
        from c2p.shards.remote import push_shard

        push_shard(out.root, upload, spec.name)
    timings["write"] += time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    result.timings = timings
    return result
