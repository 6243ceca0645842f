"""Contact sheets: RGB renders and depth maps of each view side by side, to look at before spending GPU hours."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

__all__ = ["depth_to_gray", "write_contact_sheet"]

_TITLE_H = 14


def depth_to_gray(depth: np.ndarray) -> np.ndarray:
    """Depth ``[H,W]`` (view z, background <= 0 as in z-buffers) -> uint8 ``[H,W,3]``: near dark, far light, background white.

    The same look as the network's input (the original's normalisation maps near to small values).
    """
    z = np.asarray(depth, dtype=np.float64)
    covered = np.isfinite(z) & (z > 0)
    out = np.full(z.shape, 255, dtype=np.uint8)
    if covered.any():
        lo, hi = z[covered].min(), z[covered].max()
        rel = (z[covered] - lo) / (hi - lo) if hi > lo else np.zeros(int(covered.sum()))
        out[covered] = (20 + 180 * rel).astype(np.uint8)
    return np.repeat(out[..., None], 3, axis=-1)


def _as_uint8_rgb(img: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise ValueError(f"write_contact_sheet: {name} has shape {a.shape}, expected [H,W,3]")
    if a.dtype != np.uint8:
        a = np.clip(np.nan_to_num(a.astype(np.float64)) * (255.0 if a.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return a[..., :3]


def write_contact_sheet(
    path: Union[str, Path],
    rgb: Sequence[np.ndarray],
    depth: Optional[Sequence[np.ndarray]] = None,
    titles: Optional[Sequence[str]] = None,
    max_width: int = 128,
) -> Path:
    """Write a PNG with one block per object: a title line, its V RGB views in a row, its V depth maps below.

    rgb: per object uint8 ``[V,H,W,3]``; depth: None or per object ``[V,H,W]`` (z-buffer: background
    <= 0); titles: per object (e.g. "shapenet-<uid> chair"). Tiles are scaled down to at most
    ``max_width`` pixels. Returns the path (parent directories are created).
    """
    from PIL import Image, ImageDraw

    if len(rgb) == 0:
        raise ValueError("write_contact_sheet: rgb is empty, expected one [V,H,W,3] array per object")
    if depth is not None and len(depth) != len(rgb):
        raise ValueError(f"write_contact_sheet: {len(depth)} depth entries for {len(rgb)} objects")
    titles = list(titles) if titles is not None else [f"object {i}" for i in range(len(rgb))]
    if len(titles) != len(rgb):
        raise ValueError(f"write_contact_sheet: {len(titles)} titles for {len(rgb)} objects")
    rows = []
    for i, views in enumerate(rgb):
        views = np.asarray(views)
        if views.ndim == 3:
            views = views[None]
        tiles = [_as_uint8_rgb(v, f"rgb[{i}]") for v in views]
        lines = [tiles]
        if depth is not None:
            d = np.asarray(depth[i])
            d = d[None] if d.ndim == 2 else d
            lines.append([depth_to_gray(x) for x in d])
        rows.append((titles[i], lines))
    h0, w0 = rows[0][1][0][0].shape[:2]
    scale = min(1.0, max_width / max(w0, 1))
    tw, th = max(1, int(round(w0 * scale))), max(1, int(round(h0 * scale)))
    ncol = max(len(line) for _, lines in rows for line in lines)
    height = sum(_TITLE_H + th * len(lines) for _, lines in rows)
    sheet = Image.new("RGB", (ncol * tw, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = 0
    for title, lines in rows:
        draw.text((2, y + 1), str(title), fill=(0, 0, 0))
        y += _TITLE_H
        for line in lines:
            for j, tile in enumerate(line):
                sheet.paste(Image.fromarray(tile).resize((tw, th), Image.BILINEAR), (j * tw, y))
            y += th
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG")
    return out
