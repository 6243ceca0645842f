"""The frozen towers of an evaluation: CLIP (text + image tower) and an exported depth tower,
and the depth-map settings that tower expects.

    towers = build_towers(cfg.encoder, seed=cfg.run.seed)   # CLIP model + depth tower
    setting = view_setting(cfg.encoder, towers.model)        # warns if it differs from pre-training

A depth tower export (written by :func:`c2p.train.export.export_depth_tower`) is a safetensors
file of plain visual-tower keys whose metadata records the CLIP model it was trained for
(``model``) and the depth maps it saw (``depth``, JSON); both are checked here, so a tower of
another model fails before any feature is computed. ``encoder.depth_tower`` may be an
``s3://bucket/key`` address (e.g. ``<checkpoint.remote>/export/depth_tower.safetensors``): it is
downloaded to a local cache (:mod:`c2p.storage.cache`) and loaded weights-only like a local file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from c2p.config.downstream import EncoderConfig
from c2p.eval.errors import EvalError
from c2p.eval.features import ViewSetting

__all__ = [
    "Towers",
    "build_towers",
    "load_depth_tower",
    "depth_tower_file",
    "pretraining_depth",
    "warn_depth_mismatch",
    "view_setting",
    "file_hash",
    "resolve_device",
]

log = logging.getLogger(__name__)


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
        """CLIP's learnt ``logit_scale.exp()`` (1/0.07 for a model without one)."""
        ls = getattr(self.model, "logit_scale", None)
        return float(ls.detach().exp()) if ls is not None else 1.0 / 0.07


def file_hash(path: str | Path) -> str:
    """sha256 (16 hex) of a file's bytes (checkpoint identity in reports)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def resolve_device(name: str) -> torch.device:
    """``encoder.device`` ("auto", "cpu" or "cuda") → a torch device; "auto" takes CUDA when present.

    Raises :class:`EvalError` for "cuda" on a machine without a CUDA GPU.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise EvalError("encoder.device: got 'cuda'; expected a machine with a CUDA GPU (use auto or cpu)")
    return torch.device(name)


def depth_tower_file(path: str) -> Path:
    """The local file of ``encoder.depth_tower``: the path itself, or the cached download of an
    ``s3://`` address. Raises :class:`EvalError` naming the address when it cannot be fetched."""
    from c2p.storage.cache import local_copy

    try:
        return local_copy(path)
    except (OSError, ValueError) as e:
        raise EvalError(f"encoder.depth_tower: {path} could not be downloaded ({e}); expected the s3://bucket/key "
                        "of an exported depth tower (.safetensors) readable with the AWS_* settings") from e


def load_depth_tower(path: str | Path, like: nn.Module, model_name: str = "") -> nn.Module:
    """A copy of the CLIP visual tower ``like`` with the exported depth tower weights of ``path``.

    Accepts keys as saved by ``CLIP2PointModel.depth_tower_state_dict()`` (plain visual-tower
    keys), optionally prefixed ``visual.``/``depth_tower.``/``encoder.``. Raises
    :class:`EvalError` naming the file, the tensor and both shapes when the checkpoint belongs
    to another model size, naming the file and the tensor when a weight is NaN/inf, or listing
    missing keys.
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
    for k, v in fixed.items():  # a diverged run's export: every feature would be NaN, every score chance
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            n_bad = sum(int((~torch.isfinite(t)).sum()) for t in fixed.values() if t.is_floating_point())
            raise EvalError(
                f"encoder.depth_tower: {path} holds non-finite weights: tensor {k!r} has "
                f"{int((~torch.isfinite(v)).sum())} NaN/inf values of {v.numel()} ({n_bad} in the file); "
                "expected finite weights (the pre-training run diverged or the file is damaged)"
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
    """The depth-map settings (``image_size`` pixels, ``radius`` NDC units, ``dist``) a depth tower
    export was pre-trained on, as its metadata records them ({} for files that do not)."""
    try:
        depth = json.loads(_export_metadata(Path(path)).get("depth", "{}"))
    except json.JSONDecodeError:
        return {}
    return {k: v for k, v in depth.items() if v is not None} if isinstance(depth, dict) else {}


def warn_depth_mismatch(path: str | Path, setting: ViewSetting) -> list[str]:
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

    # without a weights file the CLIP is identified by its seed ("random-seed<S>" in reports and
    # in the feature cache key), so the same seed must give the same weights in every process
    torch.manual_seed(seed)
    model = create_clip(cfg.model, cfg.pretrained, device=str(device))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    depth = None
    depth_hash = ""
    if cfg.depth_tower:
        local = depth_tower_file(cfg.depth_tower)
        depth = load_depth_tower(local, model.visual, cfg.model).to(device)
        depth_hash = file_hash(local)
    clip_hash = file_hash(cfg.pretrained) if cfg.pretrained else f"random-seed{seed}"
    return Towers(model, get_tokenizer(cfg.model), model.visual, depth, depth_hash, clip_hash)


def view_setting(cfg: EncoderConfig, model: nn.Module | None = None) -> ViewSetting:
    """The :class:`ViewSetting` of an encoder config; image_size 0 takes the CLIP model's input size.

    Warns (:func:`warn_depth_mismatch`) when the configured depth tower was pre-trained on other
    depth maps.
    """
    size = cfg.image_size
    if size == 0:
        if model is None:
            raise EvalError("encoder.image_size: got 0 (from the model) but no CLIP model was given")
        from c2p.models.clip import image_size

        size = int(image_size(model))
    setting = ViewSetting(views=str(cfg.views), image_size=size, radius=cfg.radius, dist=cfg.dist)
    if cfg.depth_tower:
        warn_depth_mismatch(depth_tower_file(cfg.depth_tower), setting)
    return setting
