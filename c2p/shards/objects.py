"""One object of a shard: load it, sample its points, render its views, encode its sample.

For each object, :func:`render_object` does, with every random draw seeded by
:func:`~c2p.shards.plan.object_seed` (so a retried shard renders it to the same bytes):

1. ``corpus.load`` → mesh and/or points (``c2p.corpora``);
2. points: ``job.points`` area-weighted surface samples of the mesh (or the corpus's own
   points), centred on their mean and scaled into the unit sphere (``normalize_unit_sphere``);
   the mesh gets the same similarity transform, so RGB renders and the point cloud (hence the
   depth maps pre-training renders from it) share one frame;
3. RGB views with ``c2p.render.MeshRenderer`` (seeded light per object), or the corpus's
   released renders (ShapeNet-55 parity path); optional ``depth.<v>.png``: the depth of the
   point cloud as pre-training sees it (``render_depth``), so previews show whether RGB and
   depth pair up.

:func:`encode_object` then turns it into a WebDataset sample (the schema's encoders). An
object that cannot become a sample (unreadable file, degenerate mesh, non-finite points,
render error, over a size or time limit: :mod:`c2p.shards.limits`) raises
:class:`ObjectFailure`, which the shard records and goes on.

Coordinate frame: shards are always world y-up. Corpora stored z-up (ModelNet) are rotated
with ``c2p.camera.rotate_zup_to_yup`` before anything is sampled or rendered.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from c2p.config.render import RenderJobConfig
from c2p.schema import SampleMeta, encode_sample, make_key
from c2p.shards.limits import ObjectLimit, check_faces, check_file_size, object_deadline
from c2p.shards.plan import RENDERER_VERSION, object_seed


class ObjectFailure(Exception):
    """An object that cannot become a sample; ``stage`` says where it failed."""

    def __init__(self, stage: str, error: str, reason: str):
        self.stage, self.error, self.reason = stage, error, reason
        super().__init__(f"{stage}: {error}: {reason}")


# ----------------------------------------------------------------------------- worker caches

# One EGL context and one corpus reader per worker process: Ray reuses workers across tasks,
# and creating a GL context costs far more than rendering one small object.
_RENDERERS: dict[tuple[int, int | None], Any] = {}
_CORPORA: dict[str, Any] = {}


def _renderer(image_size: int, device_index: int | None, cpus: float = 1.0):
    """This process's MeshRenderer for ``image_size`` on EGL device ``device_index`` (None: default)."""
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
    """This process's reader of ``cfg.corpus``."""
    key = json.dumps([cfg.corpus.name, cfg.corpus.root, cfg.corpus.split, cfg.corpus.options], sort_keys=True, default=str)
    if key not in _CORPORA:
        from c2p.corpora import open_corpus

        _CORPORA[key] = open_corpus(cfg.corpus.name, cfg.corpus.root, cfg.corpus.split, **cfg.corpus.options)
    return _CORPORA[key]


# ----------------------------------------------------------------------------- geometry


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

    from c2p.geometry import mesh_triangles, sample_surface

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
    """One object ready to encode: its sample key, points, views and ``meta.json``."""

    key: str
    points: np.ndarray  # [P,3] float32, unit sphere
    meta: SampleMeta
    rgb: np.ndarray | None  # [V,H,W,3] uint8
    depth: np.ndarray | None  # [V,H,W] float z-buffer, background < 0
    caption: str
    warnings: list[str]  # the renderer's fallbacks (e.g. a missing texture drawn in its material colour)


def render_object(ref: Any, cfg: RenderJobConfig, view_angles: np.ndarray, device_index: int | None,
                  timings: dict[str, float]) -> RenderedObject:
    """Load, sample and render one object; raises :class:`ObjectFailure` for a bad object,
    also for one over the limits of :mod:`c2p.shards.limits` (stage ``limit``).

    view_angles: ``[V,2]`` (elev, azim) degrees. ``timings`` accumulates seconds per stage.
    """
    try:
        with object_deadline(cfg.job.object_timeout_s, ref.uid):
            return _render_object(ref, cfg, view_angles, device_index, timings)
    except ObjectLimit as e:
        raise ObjectFailure("limit", e.error, e.reason) from None


def _render_object(ref: Any, cfg: RenderJobConfig, view_angles: np.ndarray, device_index: int | None,
                   timings: dict[str, float]) -> RenderedObject:
    corpus = _corpus(cfg)
    seed = object_seed(cfg.job.seed, ref.corpus, ref.uid)
    t0 = time.perf_counter()
    check_file_size(ref.source, cfg.job.max_file_mb)
    try:
        record = corpus.load(ref)
    except Exception as e:  # CorpusError from the reader, or anything a parser raised past it
        raise ObjectFailure("load", type(e).__name__, getattr(e, "reason", str(e))) from e
    check_faces(record.mesh, cfg.job.max_faces)
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
