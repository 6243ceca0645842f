"""Rendering: depth maps from points (pure PyTorch) and RGB from meshes (moderngl over headless EGL).

``import c2p.render`` never imports moderngl: :class:`MeshRenderer` (:mod:`c2p.render.mesh`, whose
EGL context comes from :mod:`c2p.render.egl`) and :func:`write_contact_sheet` load on first
attribute access, so a training node needs no GL. CLIP's image normalisation is
:mod:`c2p.imagenorm`, which needs no renderer at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from c2p.render.depth import normalize_depth, render_depth, render_depth_pair

if TYPE_CHECKING:  # pragma: no cover
    from c2p.render.mesh import MeshRenderer
    from c2p.render.preview import write_contact_sheet

__all__ = [
    "render_depth",
    "normalize_depth",
    "render_depth_pair",
    "RenderError",
    "MeshRenderer",
    "write_contact_sheet",
]


class RenderError(RuntimeError):
    """A mesh that cannot be rendered (empty, degenerate, non-finite); the message names the input and why."""


def __getattr__(name: str):
    if name == "MeshRenderer":
        from c2p.render.mesh import MeshRenderer

        return MeshRenderer
    if name == "write_contact_sheet":
        from c2p.render.preview import write_contact_sheet

        return write_contact_sheet
    raise AttributeError(f"module 'c2p.render' has no attribute {name!r}")
