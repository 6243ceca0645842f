"""One shard: load its objects, sample points, render the views, encode, write the tar.

:func:`render_shard` is a plain function (the Ray job in :mod:`c2p.shards.job` wraps it in a
task) so it can be run and tested without a cluster. For every object of the shard, in uid
order:

1. ``corpus.load`` → mesh and/or points (``c2p.corpora``);
2. points: ``job.points`` area-weighted surface samples of the mesh (or the corpus's own
   points), centred on their mean and scaled into the unit sphere (``normalize_unit_sphere``);
   the mesh gets the same similarity transform, so RGB renders and the point cloud (hence the
   depth maps pre-training renders from it) share one frame;
3. RGB views with ``c2p.render.MeshRenderer`` (seeded light per object), or the corpus's
   released renders (ShapeNet-55 parity path); optional ``depth.<v>.png``: the depth of the
   point cloud as pre-training sees it (``render_depth``), so previews show whether RGB and
   depth pair up;
4. optional ``imgfeat.<tag>.npy`` from the feature actors (:mod:`c2p.shards.features`);
5. ``encode_sample`` (the schema's encoders)
   + :class:`~c2p.schema.ShardWriter` (tmp name, fsync, atomic rename) in a per-attempt
   ``.staging/`` folder, then renamed into the output directory. By default steps 4–5 run in
   a thread of the task (``job.write_thread``) while steps 1–3 go on with the next object.

Every random draw comes from a generator seeded by :func:`~c2p.shards.plan.object_seed`, so
the same shard renders to the same bytes on every attempt. An object that fails (unreadable
file, degenerate mesh, non-finite points, render error) becomes an error record and the
shard completes without it; anything else (the output disk, a dead feature actor) raises and
Ray retries the whole shard.

Coordinate frame: shards are always world y-up. Corpora stored z-up (ModelNet) are rotated
with ``c2p.camera.rotate_zup_to_yup`` before anything is sampled or rendered.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from c2p.config.render import RenderJobConfig
from c2p.fileio import atomic_write_bytes
from c2p.schema import ShardWriter, SampleMeta, encode_sample, make_key
from c2p.shards.plan import RENDERER_VERSION, ShardSpec, error_record, feature_tag, object_seed

PARTS_DIR = "parts"
# Each attempt writes its tar in a folder of its own and renames it into place when complete:
# an attempt still running after its driver died (Ray may take a while to reap it) can then
# never rename a newer attempt's half-written file, which a shared ``<shard>.tar.tmp`` allows.
STAGING_DIR = ".staging"
FAULT_ENV = "C2P_FAULT_INJECT"
# Feature requests in flight per shard: enough to keep a feature actor busy while the next
# object renders, few enough that un-encoded views do not pile up in the object store.
FEATURE_WINDOW = 4


class ObjectFailure(Exception):
    """An object that cannot become a sample; ``stage`` says where it failed."""

    def __init__(self, stage: str, error: str, reason: str):
        self.stage, self.error, self.reason = stage, error, reason
        super().__init__(f"{stage}: {error}: {reason}")


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

    def part_record(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "fingerprint": self.fingerprint,
                "samples": self.samples, "bytes": self.bytes, "errors": self.errors, "warnings": self.warnings}


def part_path(out: str | Path, name: str) -> Path:
    """``parts/<shard>.json``: written right after the tar is renamed into place; a shard is
    complete when both exist (a crash between the two only costs re-rendering that shard)."""
    return Path(out) / PARTS_DIR / (Path(name).stem + ".json")


def read_part(out: str | Path, name: str) -> dict[str, Any] | None:
    path = part_path(out, name)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ----------------------------------------------------------------------------- worker caches

# One EGL context and one corpus reader per worker process: Ray reuses workers across tasks,
# and creating a GL context costs far more than rendering one small object.
_RENDERERS: dict[tuple[int, int | None], Any] = {}
_CORPORA: dict[str, Any] = {}


def _renderer(image_size: int, device_index: int | None, cpus: float = 1.0):
    key = (image_size, device_index)
    if key not in _RENDERERS:
        from c2p.render import MeshRenderer

        if device_index is None:
            # llvmpipe starts one raster thread per core by default; a task holds `cpus` of them,
            # and a node full of tasks would otherwise run cores x cores threads.
            os.environ.setdefault("LP_NUM_THREADS", str(max(1, int(cpus))))

        _RENDERERS[key] = MeshRenderer(image_size=image_size, device_index=device_index)
    return _RENDERERS[key]


def _corpus(cfg: RenderJobConfig):
    key = json.dumps([cfg.corpus.name, cfg.corpus.root, cfg.corpus.split, cfg.corpus.options], sort_keys=True, default=str)
    if key not in _CORPORA:
        from c2p.corpora import open_corpus

        _CORPORA[key] = open_corpus(cfg.corpus.name, cfg.corpus.root, cfg.corpus.split, **cfg.corpus.options)
    return _CORPORA[key]


# ----------------------------------------------------------------------------- geometry


def mesh_triangles(mesh: Any) -> tuple[np.ndarray, np.ndarray]:
    """World-space triangles of a trimesh Trimesh or Scene: ``(vertices [V,3] float64, faces [F,3] int64)``.

    A Scene's geometries are placed with their node transforms; visuals are not touched
    (nothing is merged, so textures stay as loaded for the renderer).
    """
    import trimesh

    if isinstance(mesh, trimesh.Trimesh):
        return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)
    if not isinstance(mesh, trimesh.Scene):
        raise ObjectFailure("points", "TypeError", f"mesh of type {type(mesh).__name__}; expected trimesh.Trimesh or Scene")
    verts, faces, offset = [], [], 0
    for node in mesh.graph.nodes_geometry:
        transform, name = mesh.graph[node]
        geom = mesh.geometry.get(name)
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            continue
        verts.append(trimesh.transform_points(np.asarray(geom.vertices, dtype=np.float64), transform))
        faces.append(np.asarray(geom.faces, dtype=np.int64) + offset)
        offset += len(geom.vertices)
    if not verts:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    return np.concatenate(verts), np.concatenate(faces)


def _zup_to_yup_matrix() -> np.ndarray:
    """4x4 column-vector form of ``rotate_zup_to_yup`` (which acts on row vectors)."""
    import torch

    from c2p.camera import rotate_zup_to_yup

    m = np.eye(4)
    m[:3, :3] = rotate_zup_to_yup(torch.eye(3, dtype=torch.float64)).numpy().T
    return m


def _similarity(centre: np.ndarray, scale: float, pre: np.ndarray | None = None) -> np.ndarray:
    """4x4 matrix ``x -> (pre x - centre) / scale`` (column vectors)."""
    m = np.eye(4)
    m[:3, :3] /= scale
    m[:3, 3] = -centre / scale
    return m @ pre if pre is not None else m


def sample_object_points(record: Any, n: int, seed: int, zup: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Points of one object, and the 4x4 transform that puts its mesh in the points' frame.

    Mesh: ``n`` area-weighted surface samples; corpus points: a seeded subset of ``n`` (with
    replacement when fewer are stored). Both are then centred on their mean and scaled to max
    norm 1 (``normalize_unit_sphere``'s convention). Returns ``(points [n,3] float32, mesh
    transform [4,4] or None without a mesh)``.
    """
    import torch

    from c2p.geometry import sample_surface

    gen = torch.Generator().manual_seed(seed)
    pre = _zup_to_yup_matrix() if zup else None
    if record.mesh is not None:
        verts, faces = mesh_triangles(record.mesh)
        if len(faces) == 0:
            raise ObjectFailure("points", "EmptyMesh", "mesh has no triangles")
        if not np.isfinite(verts).all():
            raise ObjectFailure("points", "NonFinite", f"mesh has {int((~np.isfinite(verts)).any(axis=1).sum())} NaN/inf vertices")
        if pre is not None:
            verts = verts @ pre[:3, :3].T
        try:
            pts = sample_surface(torch.from_numpy(verts), torch.from_numpy(faces), n, generator=gen).numpy()
        except ValueError as e:  # zero area, bad indices
            raise ObjectFailure("points", "DegenerateMesh", str(e)) from e
    elif record.points is not None:
        stored = np.asarray(record.points, dtype=np.float64)[:, :3]
        if len(stored) == 0 or not np.isfinite(stored).all():
            raise ObjectFailure("points", "NonFinite", f"{len(stored)} stored points, some NaN/inf or none at all")
        if pre is not None:
            stored = stored @ pre[:3, :3].T
        if len(stored) >= n:
            idx = torch.randperm(len(stored), generator=gen)[:n]
        else:
            idx = torch.randint(len(stored), (n,), generator=gen)
        pts = stored[idx.numpy()]
    else:
        raise ObjectFailure("points", "NoGeometry", "record has neither a mesh nor points")
    centre = pts.mean(axis=0)
    radius = float(np.linalg.norm(pts - centre, axis=1).max())
    if not np.isfinite(radius) or radius <= 1e-12:
        raise ObjectFailure("points", "DegenerateMesh", f"object radius {radius}; expected a finite size > 0")
    points = ((pts - centre) / radius).astype(np.float32)
    transform = _similarity(centre, radius, pre) if record.mesh is not None else None
    return points, transform


def load_released_renders(paths: list[str], image_size: int) -> np.ndarray:
    """Released RGB view files → uint8 ``[V,S,S,3]`` on white (alpha composited), resized to ``image_size``."""
    from PIL import Image

    views = []
    for p in paths:
        with Image.open(p) as img:
            img = img.convert("RGBA")
            white = Image.new("RGBA", img.size, (255, 255, 255, 255))
            rgb = Image.alpha_composite(white, img).convert("RGB")
            if rgb.size != (image_size, image_size):
                rgb = rgb.resize((image_size, image_size), Image.BICUBIC)
            views.append(np.asarray(rgb))
    return np.stack(views)


# ----------------------------------------------------------------------------- one object


@dataclass
class RenderedObject:
    key: str
    points: np.ndarray  # [P,3] float32, unit sphere
    meta: SampleMeta
    rgb: np.ndarray | None  # [V,H,W,3] uint8
    depth: np.ndarray | None  # [V,H,W] float z-buffer, background < 0
    caption: str
    warnings: list[str]  # the renderer's fallbacks (e.g. a missing texture drawn in its material colour)


def render_object(ref: Any, cfg: RenderJobConfig, view_angles: np.ndarray, device_index: int | None,
                  timings: dict[str, float]) -> RenderedObject:
    """Load, sample and render one object; raises :class:`ObjectFailure` for a bad object.

    view_angles: ``[V,2]`` (elev, azim) degrees. ``timings`` accumulates seconds per stage.
    """
    corpus = _corpus(cfg)
    seed = object_seed(cfg.job.seed, ref.corpus, ref.uid)
    t0 = time.perf_counter()
    try:
        record = corpus.load(ref)
    except Exception as e:  # CorpusError from the reader, or anything a parser raised past it
        raise ObjectFailure("load", type(e).__name__, getattr(e, "reason", str(e))) from e
    t1 = time.perf_counter()
    points, transform = sample_object_points(record, cfg.job.points, seed, getattr(corpus, "up_axis", "y") == "z")
    t2 = time.perf_counter()
    rgb, warnings = None, []
    elev, azim = view_angles[:, 0], view_angles[:, 1]
    if record.mesh is not None:
        mesh = record.mesh
        mesh.apply_transform(transform)  # the record is ours alone: transform in place
        renderer = _renderer(cfg.views.image_size, device_index, cfg.job.num_cpus)
        try:
            rgb = renderer.render(mesh, elev, azim, cfg.views.dist, light=cfg.views.light, seed=seed)
        except Exception as e:  # RenderError (degenerate mesh), or a GL error on this object
            raise ObjectFailure("render", type(e).__name__, str(e)) from e
        rgb = np.asarray(rgb, dtype=np.uint8)
        warnings = list(getattr(renderer, "last_warnings", []))
    elif record.renders:
        try:
            rgb = load_released_renders(record.renders, cfg.views.image_size)
        except Exception as e:
            raise ObjectFailure("render", type(e).__name__, f"released renders {record.renders[:1]}...: {e}") from e
    depth = None
    if cfg.views.depth_png:
        import torch

        from c2p.render import render_depth

        depth = render_depth(torch.from_numpy(points)[None], torch.from_numpy(elev), torch.from_numpy(azim),
                             cfg.views.dist, image_size=cfg.views.image_size)[0].numpy()
    t3 = time.perf_counter()
    timings["load"] += t1 - t0
    timings["points"] += t2 - t1
    timings["render"] += t3 - t2
    meta = SampleMeta(
        uid=ref.uid, corpus=ref.corpus, label=ref.label, label_index=ref.label_index, source=str(ref.source),
        views=[[float(e), float(a), float(cfg.views.dist)] for e, a in view_angles.tolist()],
        points=int(cfg.job.points), renderer=RENDERER_VERSION, caption=ref.caption or "",
    )
    return RenderedObject(make_key(ref.corpus, ref.uid), points, meta, rgb, depth, ref.caption or "", warnings)


def encode_object(obj: RenderedObject, imgfeat: dict[str, np.ndarray] | None, image_format: str) -> dict[str, Any]:
    """A rendered object → its WebDataset sample (``c2p.schema.encode_sample``). Raises ValueError for non-finite points."""
    return encode_sample(obj.key, obj.points, obj.meta, rgb=obj.rgb, depth=obj.depth, imgfeat=imgfeat,
                         caption=obj.caption or None, image_format=image_format)


# ----------------------------------------------------------------------------- fault injection


def parse_fault(spec: str) -> dict[str, Any] | None:
    """``C2P_FAULT_INJECT="shard=K[,after=N][,marker=PATH]"`` → dict, or None when empty.

    The task of shard K kills its own process (``os._exit``) after writing N samples
    (default 1, so a half-written ``.tmp`` is left behind) — only on the first attempt, known
    by the marker file it creates before dying. Used by the fault tests; harmless otherwise.
    """
    if not spec:
        return None
    out: dict[str, Any] = {"after": 1, "marker": ""}
    for item in spec.split(","):
        k, _, v = item.partition("=")
        if k not in ("shard", "after", "marker") or not v:
            raise ValueError(f"{FAULT_ENV}={spec!r}: bad item {item!r}; expected shard=K[,after=N][,marker=PATH]")
        out[k] = v if k == "marker" else int(v)
    if "shard" not in out:
        raise ValueError(f"{FAULT_ENV}={spec!r}: no shard=K")
    return out


def _maybe_die(fault: dict[str, Any] | None, shard: int, written: int, out: Path) -> None:
    if not fault or fault["shard"] != shard or written != fault["after"]:
        return
    marker = Path(fault["marker"] or out / f".fault-shard-{shard}")
    if marker.exists():
        return
    marker.write_text(f"killed pid {os.getpid()} after {written} samples\n")
    os._exit(17)


# ----------------------------------------------------------------------------- one shard


class _SampleSink:
    """Encodes and writes the shard's samples in submission order: in the calling thread, or in
    one thread of its own while the task loads and renders the next objects.

    ``write_one(item)`` does the work for one item. Unthreaded, up to ``depth`` items wait
    (requested image features arrive meanwhile; 0: each is written at once); threaded, a queue
    of ``depth`` items bounds the objects held in memory. PNG/zlib encoding and file writes run outside the GIL
    and llvmpipe rasterises in threads of its own, so the two overlap; the order of the samples,
    hence the shard's bytes, is the same either way. An exception of the thread is raised in
    the task at the next ``put`` or at ``close``. Measured with ``bench_shards.py`` (10k-triangle
    meshes, 2 cores): 1.07x objects/s on 1 worker, 1.02x on 2 (no idle core left to overlap on).
    """

    def __init__(self, write_one, threaded: bool, depth: int):
        self._write_one = write_one
        self._depth = depth
        self._pending: deque = deque()
        self._error: BaseException | None = None
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        if threaded:
            self._queue = queue.Queue(maxsize=max(1, depth))
            self._thread = threading.Thread(target=self._run, name="shard-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        assert self._queue is not None
        while (item := self._queue.get()) is not None:
            if self._error is None:  # after a failure, drain without writing so put() never blocks
                try:
                    self._write_one(item)
                except BaseException as e:
                    self._error = e

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, item: Any) -> None:
        if self._queue is None:
            self._pending.append(item)
            while len(self._pending) > self._depth:
                self._write_one(self._pending.popleft())
            return
        self._raise()
        self._queue.put(item)

    def close(self) -> None:
        """Write everything still queued; raises the thread's exception, if any."""
        if self._queue is None:
            while self._pending:
                self._write_one(self._pending.popleft())
            return
        self.stop()
        self._raise()

    def stop(self) -> None:
        """End the thread after the queued items (no-op unthreaded or when already stopped)."""
        if self._thread is not None and self._thread.is_alive():
            assert self._queue is not None
            self._queue.put(None)
            self._thread.join()


def render_shard(spec: ShardSpec, cfg: RenderJobConfig, fingerprint: str, *, feature_actors: list | None = None,
                 device_index: int | None = None, fault: str = "") -> ShardResult:
    """Render shard ``spec`` into ``<cfg.out>/<spec.name>`` and its ``parts/`` record.

    feature_actors: Ray handles of :class:`c2p.shards.features.ImageFeatureEncoder` actors (the
    one used is picked by shard index), or None for no ``imgfeat``. device_index: GPU for the
    EGL context (None: the default device, llvmpipe on CPU nodes). fault: see :func:`parse_fault`.
    With ``cfg.job.write_thread`` samples are encoded and written by a :class:`_SampleSink`
    thread while the next objects render. Returns the :class:`ShardResult`; raises only for
    errors that are not the objects' fault.
    """
    t_start = time.perf_counter()
    out = Path(cfg.out)
    fault_cfg = parse_fault(fault)
    from c2p.camera import views as view_set

    view_angles = view_set(cfg.views.set).numpy().astype(np.float64)
    tag = feature_tag(cfg)
    actor = feature_actors[spec.index % len(feature_actors)] if (feature_actors and tag) else None
    timings = {k: 0.0 for k in ("load", "points", "render", "features", "encode", "write")}
    errors: list[tuple[int, dict[str, Any]]] = []  # (position in the shard, record): sorted at the end
    warnings: list[dict[str, Any]] = []

    staging = out / STAGING_DIR / f"{spec.index:06d}-{os.getpid()}-{time.time_ns()}"
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
        _maybe_die(fault_cfg, spec.index, writer.count, out)

    # Feature requests in flight: enough to keep a feature actor busy while the next object
    # renders; without features the thread needs one object queued behind the one it encodes,
    # and in line each object is written at once.
    held = FEATURE_WINDOW if actor is not None else 2 if cfg.job.write_thread else 0
    sink = _SampleSink(write_one, threaded=cfg.job.write_thread, depth=held)
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
        os.replace(staging / spec.name, out / spec.name)
    except BaseException:
        sink.stop()
        writer.abort()
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = (out / spec.name).stat().st_size
    records = [rec for _, rec in sorted(errors, key=lambda e: e[0])]
    result = ShardResult(spec.index, spec.name, fingerprint, writer.count, size, records, warnings)
    part_path(out, spec.name).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(part_path(out, spec.name), json.dumps(result.part_record(), indent=1, sort_keys=True).encode())
    timings["write"] += time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    result.timings = timings
    return result
