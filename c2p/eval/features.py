"""From a corpus split to cached per-view features of a frozen visual tower.

Evaluation and adapter training see an object only through its V depth views encoded by
frozen towers, so the expensive part (render + encode) is done once per (objects, tower,
view setting) and cached on disk under a hash of all of them; a few-shot sweep of 5 K × 3
seeds × 100 epochs then costs only adapter steps.

    split = load_split(cfg.data, cfg.data.test_split)          # points [N,P,3], labels [N]
    towers = build_towers(cfg.encoder, seed=cfg.run.seed)      # CLIP model + depth tower
    feats = ViewFeatureCache(dir).features(split.points, towers.clip_visual, setting)  # [N,V,D]
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from c2p.config.downstream import EncoderConfig, EvalDataConfig

__all__ = [
    "EvalError",
    "Split",
    "load_split",
    "check_classes",
    "ViewSetting",
    "view_setting",
    "render_views",
    "encode_views",
    "ViewFeatureCache",
    "Towers",
    "build_towers",
    "load_depth_tower",
    "pretraining_depth",
    "warn_depth_mismatch",
    "module_hash",
    "file_hash",
    "resolve_device",
]

log = logging.getLogger(__name__)

# bump when the rendering or encoding code changes what a cached feature means
FEATURE_VERSION = "1"


class EvalError(ValueError):
    """Bad evaluation input (corpus, classes, checkpoint): the message names the input, value and expectation."""


# ----------------------------------------------------------------------------- corpus split


@dataclass
class Split:
    """One split of a corpus, as evaluation sees it.

    points: [N,P,3] float32 (unit sphere if normalised, y-up if rotated); labels: [N] long indices
    into ``classes``; uids: N object ids; errors: objects that could not be loaded (uid, reason).
    """

    corpus: str
    split: str
    points: Tensor
    labels: Tensor
    classes: list[str]
    uids: list[str]
    errors: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.uids)


def check_classes(expected: list[str], corpus_labels: list[str], where: str) -> list[int]:
    """Map corpus label indices to positions in ``expected`` (the configured class list).

    Returns ``remap`` with ``remap[corpus_index] = expected_index``. Raises :class:`EvalError`
    naming the missing and extra class names when the two lists differ as sets.
    """
    if not expected:
        return list(range(len(corpus_labels)))
    missing = [c for c in corpus_labels if c not in expected]
    extra = [c for c in expected if c not in corpus_labels]
    if missing or extra:
        raise EvalError(
            f"data.classes does not match the labels of {where}: "
            f"corpus labels not in data.classes: {missing}; data.classes not in the corpus: {extra} "
            f"(corpus has {len(corpus_labels)} labels, data.classes has {len(expected)})"
        )
    return [expected.index(c) for c in corpus_labels]


def _object_points(record, n: int) -> np.ndarray:
    """[n,3] float32 points of an ObjectRecord: its stored points, or sampled from its mesh.

    The generator is seeded from the uid (crc32, not Python's salted hash) so the same object
    always gives the same points, and the feature cache stays valid across processes.
    """
    from c2p.geometry import sample_surface

    gen = torch.Generator().manual_seed(zlib.crc32(record.ref.uid.encode()))
    if record.points is not None:
        pts = torch.as_tensor(np.asarray(record.points, dtype=np.float32))
        if pts.dim() != 2 or pts.shape[1] != 3 or pts.shape[0] == 0:
            raise EvalError(f"object {record.ref.uid}: points of shape {list(pts.shape)}; expected [N>0, 3]")
        if pts.shape[0] >= n:
            idx = torch.randperm(pts.shape[0], generator=gen)[:n]
        else:  # fewer stored points than asked: repeat some (a renderer splat does not care)
            idx = torch.cat([torch.arange(pts.shape[0]), torch.randint(pts.shape[0], (n - pts.shape[0],), generator=gen)])
        return pts[idx].numpy()
    mesh = record.mesh
    if mesh is None:
        raise EvalError(f"object {record.ref.uid}: neither points nor a mesh")
    import trimesh

    if isinstance(mesh, trimesh.Scene):  # → one mesh in world coordinates (GLB scenes: Objaverse)
        mesh = mesh.to_mesh() if hasattr(mesh, "to_mesh") else mesh.dump(concatenate=True)
    verts = torch.as_tensor(np.asarray(mesh.vertices, dtype=np.float32))
    faces = torch.as_tensor(np.asarray(mesh.faces, dtype=np.int64))
    if len(verts) == 0 or len(faces) == 0:
        raise EvalError(f"object {record.ref.uid}: empty mesh ({len(verts)} vertices, {len(faces)} faces)")
    return sample_surface(verts, faces, n, generator=gen).float().numpy()


def load_split(cfg: EvalDataConfig, split: str) -> Split:
    """Read ``split`` of the configured corpus into memory.

    Objects that fail to load are recorded in ``Split.errors`` and skipped (logged), never fatal.
    Raises :class:`EvalError` if the split has no usable object or its labels do not match
    ``cfg.classes``.
    """
    from c2p.corpora import ErrorRecord, open_corpus

    corpus = open_corpus(cfg.corpus, cfg.root, split=split)
    where = f"corpus {cfg.corpus!r} at {cfg.root} split {split!r}"
    if getattr(corpus, "up_axis", "y") == "z" and not cfg.rotate_zup:
        log.warning("%s stores z-up geometry but data.rotate_zup is false: the depth views expect y-up", where)
    labels = list(corpus.labels)
    remap = check_classes(list(cfg.classes), labels, where)
    classes = list(cfg.classes) if cfg.classes else labels
    points, ys, uids, errors = [], [], [], []
    for rec in corpus.records():
        if cfg.max_objects and len(uids) >= cfg.max_objects:
            break
        if isinstance(rec, ErrorRecord):
            errors.append((rec.uid, rec.reason))
            continue
        try:
            pts = _object_points(rec, cfg.points)
        except Exception as e:  # one broken object must not end the evaluation
            errors.append((rec.ref.uid, f"{type(e).__name__}: {e}"))
            continue
        if not 0 <= rec.ref.label_index < len(labels):
            errors.append((rec.ref.uid, f"label index {rec.ref.label_index} outside the corpus's {len(labels)} labels"))
            continue
        points.append(pts)
        ys.append(remap[rec.ref.label_index])
        uids.append(rec.ref.uid)
    if errors:
        log.warning("%s: %d objects skipped, first: %s", where, len(errors), errors[0])
    if not uids:
        raise EvalError(f"{where} is empty: no loadable object ({len(errors)} unreadable); expected at least one")
    pts = torch.from_numpy(np.stack(points))
    if cfg.normalize:
        from c2p.geometry import normalize_unit_sphere

        pts = normalize_unit_sphere(pts)
    if cfg.rotate_zup:
        from c2p.camera import rotate_zup_to_yup

        pts = rotate_zup_to_yup(pts)
    return Split(cfg.corpus, split, pts.float().contiguous(), torch.tensor(ys, dtype=torch.long), classes, uids, errors)


# ----------------------------------------------------------------------------- rendering + encoding


@dataclass(frozen=True)
class ViewSetting:
    """How points become depth images. views: "10" or "6" (the original sets); image_size in pixels;
    radius in NDC units; dist: camera distance."""

    views: str = "10"  # "10" or "6"
    image_size: int = 224
    radius: float = 0.02
    dist: float = 1.0

    @property
    def num_views(self) -> int:
        from c2p.camera import views

        return int(views(self.views).shape[0])


def render_views(points: Tensor, setting: ViewSetting) -> Tensor:
    """points: [B,N,3] float, unit sphere, y-up → [B,V,3,H,W] CLIP-normalised depth images."""
    from c2p.camera import views
    from c2p.render import normalize_depth, render_depth

    ev = views(setting.views).to(points.device)
    zbuf = render_depth(points, ev[:, 0], ev[:, 1], setting.dist, image_size=setting.image_size, radius=setting.radius)
    return normalize_depth(zbuf)


@torch.no_grad()
def encode_views(points: Tensor, visual: nn.Module, setting: ViewSetting, batch_size: int = 64, device: str | torch.device = "cpu") -> Tensor:
    """points: [N,P,3] float → [N,V,D] float32 features (not normalised) of ``visual`` on each depth view.

    ``visual`` maps [B,3,H,W] images to [B,D] (an open_clip visual tower or DepthEncoder).
    Rendering and encoding run on ``device`` in chunks of ``batch_size`` objects.
    """
    was_training = visual.training
    visual.eval()
    out = []
    try:
        for start in range(0, points.shape[0], batch_size):
            pts = points[start : start + batch_size].to(device)
            imgs = render_views(pts, setting)  # [b,V,3,H,W]
            b, v = imgs.shape[:2]
            feats = visual(imgs.flatten(0, 1))
            if isinstance(feats, (tuple, list)):  # towers that also return tokens
                feats = feats[0]
            out.append(feats.float().reshape(b, v, -1).cpu())
    finally:
        visual.train(was_training)
    return torch.cat(out)


def _update_tensor(h, t: Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{list(t.shape)}".encode())
    # reshape(-1): a 0-d tensor cannot be viewed as bytes
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def module_hash(module: nn.Module) -> str:
    """sha256 (16 hex) of a module's class and state dict: identifies a tower's weights."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for k, v in module.state_dict().items():
        h.update(k.encode())
        _update_tensor(h, v)
    return h.hexdigest()[:16]


def file_hash(path: str | Path) -> str:
    """sha256 (16 hex) of a file's bytes (checkpoint identity in reports)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


class ViewFeatureCache:
    """Disk cache of :func:`encode_views` keyed by a hash of (points, tower weights, view setting).

    A file is written under a temporary name and renamed, so a crashed job never leaves a half
    entry and concurrent array tasks computing the same entry do not corrupt each other.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def key(self, points: Tensor, visual: nn.Module, setting: ViewSetting) -> str:
        h = hashlib.sha256(f"v{FEATURE_VERSION}|{setting}|{module_hash(visual)}".encode())
        _update_tensor(h, points.float())
        return h.hexdigest()[:24]

    def features(self, points: Tensor, visual: nn.Module, setting: ViewSetting, batch_size: int = 64, device: str | torch.device = "cpu") -> Tensor:
        """[N,P,3] → [N,V,D] float32, from the cache when present."""
        path = self.root / f"{self.key(points, visual, setting)}.pt"
        if path.is_file():
            try:
                feats = torch.load(path, map_location="cpu", weights_only=True)
                if feats.shape[0] == points.shape[0]:
                    self.hits += 1
                    return feats
            except Exception as e:  # a corrupt entry is recomputed, not fatal
                log.warning("feature cache entry %s unreadable (%s): recomputing", path, e)
        self.misses += 1
        feats = encode_views(points, visual, setting, batch_size=batch_size, device=device)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save(feats, tmp)
        os.replace(tmp, path)
        return feats


# ----------------------------------------------------------------------------- towers


@dataclass
class Towers:
    """Frozen encoders of an evaluation: the CLIP model (text tower + its visual tower), its
    tokenizer, and the depth tower (None: no exported tower configured)."""

    model: nn.Module
    tokenizer: object
    clip_visual: nn.Module
    depth_visual: nn.Module | None
    depth_hash: str  # file hash of the exported depth tower, "" if none
    clip_hash: str  # file hash of the CLIP weights, or "random-seed<S>"

    @property
    def logit_scale(self) -> float:
        ls = getattr(self.model, "logit_scale", None)
        return float(ls.detach().exp()) if ls is not None else 1.0 / 0.07


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise EvalError("encoder.device: got 'cuda'; expected a machine with a CUDA GPU (use auto or cpu)")
    return torch.device(name)


def load_depth_tower(path: str | Path, like: nn.Module, model_name: str = "") -> nn.Module:
    """A copy of the CLIP visual tower ``like`` with the exported depth tower weights of ``path``.

    Accepts keys as saved by ``CLIP2PointModel.depth_tower_state_dict()`` (plain visual-tower
    keys), optionally prefixed ``visual.``/``depth_tower.``/``encoder.``. Raises
    :class:`EvalError` naming the file, the tensor and both shapes when the checkpoint belongs
    to another model size, or listing missing keys.
    """
    from c2p.models.clip import read_state_dict

    path = Path(path)
    if not path.is_file():
        raise EvalError(f"encoder.depth_tower: {path} does not exist; expected an exported depth tower (.safetensors)")
    try:
        state = read_state_dict(path, model_name=model_name)
    except (OSError, ValueError) as e:
        raise EvalError(f"encoder.depth_tower: {path} is not a readable weights file ({e})") from e
    exported_for = _exported_model(path)
    if model_name and exported_for and exported_for != model_name:
        # same-shaped towers can still differ (ViT-B-32 vs ViT-B-32-quickgelu): trust the export's record
        raise EvalError(
            f"encoder.depth_tower: {path} was exported for model {exported_for!r} (a checkpoint of another model); "
            f"encoder.model is {model_name!r}: expected the same model name"
        )
    tower = copy.deepcopy(like)
    own = tower.state_dict()
    fixed = {}
    for k, v in state.items():
        for prefix in ("module.", "depth_tower.", "depth.", "encoder.", "visual."):
            if k not in own and k.startswith(prefix):
                k = k[len(prefix) :]
        fixed[k] = v
    what = f"model {model_name!r}" if model_name else "the CLIP visual tower"
    for k, v in fixed.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            raise EvalError(
                f"encoder.depth_tower: {path} is a checkpoint of another model size: tensor {k!r} has shape "
                f"{list(v.shape)} in the file but {list(own[k].shape)} in {what}"
            )
    missing = [k for k in own if k not in fixed]
    unexpected = [k for k in fixed if k not in own]
    if missing or unexpected:
        raise EvalError(
            f"encoder.depth_tower: {path} does not fit {what}: missing {len(missing)} tensors "
            f"(e.g. {missing[:3]}), unexpected {len(unexpected)} (e.g. {unexpected[:3]}); "
            "expected a depth tower exported for this model"
        )
    tower.load_state_dict({k: fixed[k].to(own[k].dtype) for k in own})
    for p in tower.parameters():
        p.requires_grad_(False)
    return tower.eval()


def _export_metadata(path: Path) -> dict[str, str]:
    """The safetensors metadata of a depth tower export ({} for other files)."""
    if path.suffix != ".safetensors":
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # unreadable files are reported by read_state_dict
        return {}


def _exported_model(path: Path) -> str:
    """The model name a depth tower export records in its safetensors metadata ("" if none)."""
    name = _export_metadata(path).get("model", "")
    return "" if name in ("", "None") else name


def pretraining_depth(path: str | Path) -> dict[str, Any]:
    """The depth-map settings (``image_size``, ``radius``, ``dist``) a depth tower export was
    pre-trained on, as its metadata records them ({} for files that do not)."""
    try:
        depth = json.loads(_export_metadata(Path(path)).get("depth", "{}"))
    except json.JSONDecodeError:
        return {}
    return {k: v for k, v in depth.items() if v is not None} if isinstance(depth, dict) else {}


def warn_depth_mismatch(path: str | Path, setting: "ViewSetting") -> list[str]:
    """Log (and return) a warning per depth-map setting that differs from the tower's pre-training:
    a tower pre-trained on 0.03-radius splats sees 0.02-radius maps as sparser, out-of-distribution
    input (in the demo, maps of radius 0.02 for a tower pre-trained at 0.03 cost 17 points of
    zero-shot accuracy)."""
    trained = pretraining_depth(path)
    notes = [f"encoder.{k}={getattr(setting, k)} but {path} was pre-trained with depth.{k}={trained[k]}"
             for k in ("radius", "dist", "image_size") if k in trained and not math.isclose(float(trained[k]), float(getattr(setting, k)))]
    for note in notes:
        log.warning("%s: its depth maps will look unlike those it learnt from", note)
    return notes


def build_towers(cfg: EncoderConfig, seed: int = 0, device: str | torch.device = "cpu") -> Towers:
    """Create the frozen CLIP model (``cfg.model``, weights from ``cfg.pretrained`` or random
    init seeded by ``seed``) and, if ``cfg.depth_tower`` is set, the exported depth tower."""
    from c2p.models.clip import create_clip, get_tokenizer

    torch.manual_seed(seed)  # random-init CLIP (tests, smoke runs) must be the same every run
    model = create_clip(cfg.model, cfg.pretrained, device=str(device))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    depth = None
    depth_hash = ""
    if cfg.depth_tower:
        depth = load_depth_tower(cfg.depth_tower, model.visual, cfg.model).to(device)
        depth_hash = file_hash(cfg.depth_tower)
    clip_hash = file_hash(cfg.pretrained) if cfg.pretrained else f"random-seed{seed}"
    return Towers(model, get_tokenizer(cfg.model), model.visual, depth, depth_hash, clip_hash)


def view_setting(cfg: EncoderConfig, model: nn.Module | None = None) -> ViewSetting:
    """The :class:`ViewSetting` of an encoder config; image_size 0 takes the CLIP model's input size."""
    size = cfg.image_size
    if size == 0:
        if model is None:
            raise EvalError("encoder.image_size: got 0 (from the model) but no CLIP model was given")
        from c2p.models.clip import image_size

        size = int(image_size(model))
    setting = ViewSetting(views=str(cfg.views), image_size=size, radius=cfg.radius, dist=cfg.dist)
    if cfg.depth_tower:
        warn_depth_mismatch(cfg.depth_tower, setting)
    return setting

