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

Released evaluation sets (whole files checked; a file whose arrays disagree is refused):

| name                    | format                                                    | module        |
|-------------------------|-----------------------------------------------------------|---------------|
| ``modelnet_h5``         | ModelNet40 2048-point HDF5 (``ply_data_*.h5``, shape_names)| modelnet_h5   |
| ``scanobjectnn_release``| ScanObjectNN h5 variants (OBJ_ONLY, OBJ_BG, PB_T50_RS, ...) | scanobjectnn  |
| ``openshape_modelnet40``| OpenShape's ``test_split.json`` + ``test_pc.npy``           | openshape     |
| ``openshape_lvis``      | OpenShape's Objaverse-LVIS ``lvis.json`` + per-object .npy  | openshape     |

:mod:`c2p.corpora.released` exports a synthetic world in all four.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from c2p.corpora.base import Corpus, CorpusError, ErrorRecord, ObjectRecord, ObjectRef

__all__ = [
    "CORPORA",
    "RELEASED",
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
    "modelnet_h5": ("c2p.corpora.modelnet_h5", "ModelNetH5Corpus"),
    "scanobjectnn_release": ("c2p.corpora.scanobjectnn", "ScanObjectNNRelease"),
    "openshape_modelnet40": ("c2p.corpora.openshape", "OpenShapeModelNet40"),
    "openshape_lvis": ("c2p.corpora.openshape", "OpenShapeLVIS"),
}

# the readers of released evaluation sets (the suite's protocols name them)
RELEASED = ("modelnet_h5", "scanobjectnn_release", "openshape_modelnet40", "openshape_lvis")


def open_corpus(name: str, root: str | Path, split: str = "train", **kw) -> Corpus:
    """Open the reader ``name`` on ``root`` for ``split`` ("train", "test" or "all").

    Extra keyword arguments go to the reader (see each module). Raises ValueError for an
    unknown name or split, CorpusError when the root itself is unusable.
    """
    if name not in CORPORA:
        raise ValueError(f"corpus: {name!r}, expected one of {sorted(CORPORA)}")
    module, factory = CORPORA[name]
    return getattr(importlib.import_module(module), factory)(root, split, **kw)
