"""Models: CLIP from open_clip (``c2p.models.clip``), the CLIP2Point depth tower and pre-training
module (``c2p.models.clip2point``) and the Gated Dual-Path Adapter (``c2p.models.gdpa``).

Import from the submodules; this package imports nothing itself, so importing one model
module does not pull in open_clip or the others.
"""

_LAZY = {
    "GatedDualPathAdapter": "c2p.models.gdpa",
    "CLIP2PointModel": "c2p.models.clip2point",
    "DepthEncoder": "c2p.models.clip2point",
    "create_clip": "c2p.models.clip",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    """``c2p.models.GatedDualPathAdapter`` etc., imported on first use only."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'c2p.models' has no attribute {name!r}")
