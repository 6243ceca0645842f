"""Models: CLIP from open_clip (``c2p.models.clip``), the CLIP2Point depth tower and pre-training
module (``c2p.models.clip2point``) and the Gated Dual-Path Adapter (``c2p.models.gdpa``).

Import from the submodules; this package imports nothing itself, so importing one model
module does not pull in open_clip or the others.
"""
