"""One raw shard sample → one training example: a point subset, one view, its image or feature.

Only what the step uses is decoded: one RGB view chosen at random among the views the
sample has (the original: one random view of 10 per object per step), or, with precomputed
features, that view's row of ``imgfeat.<tag>.npy`` and no image at all. Points are
subsampled without replacement (1024 of 8192 by default).

Every random choice comes from the generator passed in, so the example is a pure function
of (raw sample, generator state); the stream owns the generators and their seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from c2p.data.npy import decode_npy_cached
from c2p.imagenorm import normalize_rgb  # one definition of CLIP's normalisation (pure torch, no renderer)
from c2p.schema import SampleMeta, decode_image, rgb_member, rgb_views


class BadSample(ValueError):
    """A sample that cannot be used (missing or undecodable member); the stream skips and counts it."""


@dataclass(frozen=True)
class SampleDecoder:
    """Decodes raw samples for one stream.

    ``points``: points per example; ``image_size``: RGB side in pixels (resized bicubic, as
    CLIP's preprocessing, when the stored render differs); ``imgfeat_tag``: read
    ``imgfeat.<tag>.npy`` instead of an image (empty: decode RGB); ``views_per_object``:
    only views ``0..views_per_object-1`` are candidates.
    """

    points: int
    image_size: int
    imgfeat_tag: str = ""
    views_per_object: int = 10

    @property
    def feature_member(self) -> str:
        return f"imgfeat.{self.imgfeat_tag}.npy"

    def keep_member(self, name: str) -> bool:
        """Which tar members to keep in memory (``name`` is ``<key>.<member>``): not the unused images."""
        member = name.split(".", 1)[1] if "." in name else name
        if member.startswith("depth."):
            return False
        if self.imgfeat_tag:
            return not member.startswith(("rgb.", "imgfeat.")) or member == self.feature_member
        return not member.startswith("imgfeat.")

    def __call__(self, raw: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """Raw sample → ``dict(points [P,3] float32, view [3] float32 (elev°, azim°, dist),
        image [H,W,3] uint8 | imgfeat [D] float32, label int, key str)``; raises :class:`BadSample`."""
        key = raw.get("__key__", "?")
        for member in ("points.npy", "meta.json"):
            if member not in raw:
                raise BadSample(f"no {member}")
        try:
            meta = SampleMeta.from_json(raw["meta.json"])
        except Exception as exn:
            raise BadSample(f"meta.json: {type(exn).__name__}: {exn}") from exn
        n_views = min(len(meta.views), self.views_per_object)
        feats = None
        if self.imgfeat_tag:
            if self.feature_member not in raw:
                raise BadSample(f"no {self.feature_member}")
            feats = self._npy(raw, self.feature_member)
            if feats.ndim != 2:
                raise BadSample(f"{self.feature_member} has shape {feats.shape}; expected [V,D]")
            candidates = list(range(min(n_views, feats.shape[0])))
        else:
            candidates = [v for v in rgb_views(raw) if v < n_views]
        if not candidates:
            raise BadSample(f"no usable view (meta views {len(meta.views)}, views_per_object {self.views_per_object})")
        view = candidates[int(rng.integers(len(candidates)))]

        points = self._npy(raw, "points.npy")
        if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
            raise BadSample(f"points.npy has shape {points.shape}; expected [P,3]")
        # Without replacement as the original; a sample stored with fewer points repeats some.
        if len(points) >= self.points:
            idx = rng.choice(len(points), self.points, replace=False)
        else:
            idx = rng.integers(len(points), size=self.points)
        chosen = points[idx].astype(np.float32)
        if not np.isfinite(chosen).all():
            raise BadSample("points.npy has non-finite values")

        out: dict[str, Any] = {
            "points": chosen,
            "view": np.asarray(meta.views[view][:3], dtype=np.float32),
            "label": int(meta.label_index),
            "key": key,
        }
        if feats is not None:
            out["imgfeat"] = feats[view].astype(np.float32)
        else:
            out["image"] = self._image(raw, view)
        return out

    @staticmethod
    def _npy(raw: dict[str, Any], member: str) -> np.ndarray:
        try:
            return decode_npy_cached(raw[member])
        except Exception as exn:
            raise BadSample(f"{member}: {type(exn).__name__}: {exn}") from exn

    def _image(self, raw: dict[str, Any], view: int) -> np.ndarray:
        member = rgb_member(raw, view)
        try:
            image = decode_image(raw[member])
        except Exception as exn:
            raise BadSample(f"{member}: {type(exn).__name__}: {exn}") from exn
        if image.ndim != 3 or image.shape[2] != 3:
            raise BadSample(f"{member} has shape {image.shape}; expected [H,W,3] RGB")
        if image.shape[:2] != (self.image_size, self.image_size):
            from PIL import Image

            image = np.asarray(
                Image.fromarray(image).resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
            )
        return image


def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Decoded examples → the batch of the contract.

    ``points [B,P,3] float32``, ``view [B,3] float32``, ``image [B,3,H,W] float32``
    (CLIP mean/std normalised) or ``imgfeat [B,D] float32``, ``label [B] long``, ``key list[str]``.
    """
    batch: dict[str, Any] = {
        "points": torch.from_numpy(np.stack([e["points"] for e in examples])),
        "view": torch.from_numpy(np.stack([e["view"] for e in examples])),
        "label": torch.tensor([e["label"] for e in examples], dtype=torch.long),
        "key": [e["key"] for e in examples],
    }
    if "imgfeat" in examples[0]:
        batch["imgfeat"] = torch.from_numpy(np.stack([e["imgfeat"] for e in examples]))
    else:
        batch["image"] = normalize_rgb(torch.from_numpy(np.stack([e["image"] for e in examples])))
    return batch
