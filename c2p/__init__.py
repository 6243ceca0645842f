"""c2p: CLIP2Point pre-training at scale.

Import what you need from its modules (``c2p.render``, ``c2p.corpora``, ``c2p.data``, ...):
this package imports nothing heavy on its own, so a training node needs no GL and no Ray.
"""

__version__ = "0.1.0"
