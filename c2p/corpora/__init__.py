"""Corpus readers: one module per on-disk format, one entry point :func:`open_corpus`.

| name           | format                                                        | module        |
|----------------|---------------------------------------------------------------|---------------|
| ``synthetic``  | procedural corpus in ShapeNetCore v2 or ModelNet layout       | synthetic     |
| ``shapenet``   | ShapeNetCore v2: taxonomy.json + models/model_normalized.obj  | shapenet      |
| ``shapenet55`` | ShapeNet-55 8192-point .npy + released 10-view renders        | shapenet55    |
| ``objaverse``  | folder of .glb + uid→label/caption table (CSV or JSON)        | objaverse     |
| ``modelnet``   | ModelNet10/40 ``<class>/train|test/*.off``                    | modelnet      |
| ``scanobjectnn``| ScanObjectNN ``.h5`` with data/label                          | scanobjectnn  |
| ``manifest``   | JSONL of path, label, caption (mesh or .npy/.ply points)      | manifest      |
"""

from __future__ import annotations

import importlib
from pathlib import Path

from c2p.corpora.base import Corpus, CorpusError, ErrorRecord, ObjectRecord, ObjectRef

__all__ = [
    "CORPORA",
    "Corpus",
    "CorpusError",
    "ErrorRecord",
    "ObjectRecord",
    "ObjectRef",
    "open_corpus",
]

# name -> (module, factory); modules are imported only when their corpus is opened.
CORPORA: dict[str, tuple[str, str]] = {
    "synthetic": ("c2p.corpora.synthetic", "open_synthetic"),
    "shapenet": ("c2p.corpora.shapenet", "ShapeNetCorpus"),
    "shapenet55": ("c2p.corpora.shapenet55", "ShapeNet55Corpus"),
    "objaverse": ("c2p.corpora.objaverse", "ObjaverseCorpus"),
    "modelnet": ("c2p.corpora.modelnet", "ModelNetCorpus"),
    "scanobjectnn": ("c2p.corpora.scanobjectnn", "ScanObjectNNCorpus"),
    "manifest": ("c2p.corpora.manifest", "ManifestCorpus"),
}


def open_corpus(name: str, root: str | Path, split: str = "train", **kw) -> Corpus:
    """Open the reader ``name`` on ``root`` for ``split`` ("train", "test" or "all").

    Extra keyword arguments go to the reader (see each module). Raises ValueError for an
    unknown name or split, CorpusError when the root itself is unusable.
    """
    if name not in CORPORA:
        raise ValueError(f"corpus: {name!r}, expected one of {sorted(CORPORA)}")
    module, factory = CORPORA[name]
    return getattr(importlib.import_module(module), factory)(root, split, **kw)
