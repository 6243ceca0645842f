"""ShapeNetCore v2 reader (meshes + taxonomy), world y-up.

On-disk layout (as distributed)::

    root/taxonomy.json                      [{"synsetId": "03001627", "name": "chair", "children": [...], ...}, ...]
    root/<synsetId>/<modelId>/models/model_normalized.obj   (+ .mtl, "map_Kd ../images/texture0.jpg")
    root/<synsetId>/<modelId>/images/texture*.{jpg,png}
    root/all.csv                            optional split file: id,synsetId,subSynsetId,modelId,split
    root/captions.csv                       optional: uid,caption (or Text2Shape's modelId,description)

Labels are the first name of each synset present on disk ("airplane,aeroplane,plane" →
"airplane"), sorted. uid = ``<synsetId>-<modelId>``. Splits come from ``all.csv`` (ShapeNet's
train/val/test split file; "val" rows are only in split "all"). Without it every model is
"train" (and "all"), and "test" is empty. Textures are resolved inside the model's own
folder (ShapeNet's MTLs point to ``../images/``); a missing texture image still loads the
mesh with its MTL diffuse colour as material.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from c2p.corpora.base import (
    Corpus,
    CorpusError,
    ErrorRecord,
    ObjectRecord,
    ObjectRef,
    check_file,
    read_captions,
    read_table,
    require_file,
)
from c2p.corpora.meshio import load_mesh_file

log = logging.getLogger(__name__)

MODEL_FILE = Path("models") / "model_normalized.obj"
TAXONOMY = "taxonomy.json"
SPLIT_FILE = "all.csv"
CAPTIONS = "captions.csv"


def synset_label(name: str) -> str:
    """ShapeNet taxonomy name → label: the first comma-separated name, stripped."""
    return name.split(",")[0].strip()


class ShapeNetCorpus(Corpus):
    """ShapeNetCore v2 reader. ``root``: folder holding taxonomy.json and the synset folders."""

    name = "shapenet"
    up_axis = "y"

    def __init__(self, root: str | Path, split: str = "train", name: str | None = None):
        super().__init__(root, split, name)
        tax_path = self.root / TAXONOMY
        require_file(tax_path)
        try:
            taxonomy = json.loads(tax_path.read_text(encoding="utf-8"))
            self.synset_names = {str(t["synsetId"]).zfill(8): synset_label(t["name"]) for t in taxonomy}
        except (ValueError, KeyError, TypeError) as exc:
            raise CorpusError(tax_path, f"not a ShapeNet taxonomy (list of {{synsetId, name}}): {exc}") from exc
        self.synsets = sorted(
            d.name for d in self.root.iterdir() if d.is_dir() and d.name in self.synset_names
        )
        self.labels = sorted({self.synset_names[s] for s in self.synsets})
        self.captions = read_captions(self.root / CAPTIONS)

    def _models(self) -> list[tuple[str, str]]:
        """(synsetId, modelId) pairs of the split."""
        split_path = self.root / SPLIT_FILE
        on_disk = self.split == "all" or not split_path.is_file()
        if not split_path.is_file() and self.split == "test":
            log.warning("%s: no %s split file: every model is 'train', split 'test' is empty", self.root, SPLIT_FILE)
            return []
        if on_disk:
            return [
                (s, m.name)
                for s in self.synsets
                for m in sorted((self.root / s).iterdir())
                if not m.name.startswith(".")
            ]
        present = set(self.synsets)
        pairs = []
        for row in read_table(split_path):
            # pandas-written copies of all.csv lose the synset's leading zero: restore it.
            synset = str(row.get("synsetId", "")).strip().zfill(8)
            if row.get("split", "").strip() == self.split and synset in present:
                pairs.append((synset, str(row.get("modelId", "")).strip()))
        return pairs

    def _list(self) -> tuple[list[ObjectRef], list[ErrorRecord]]:
        refs: list[ObjectRef] = []
        errors: list[ErrorRecord] = []
        for synset, model in self._models():
            uid = f"{synset}-{model}"
            source = self.root / synset / model / MODEL_FILE
            reason = check_file(source)
            if reason is not None:
                errors.append(ErrorRecord(self.name, uid, str(source), reason))
                continue
            label = self.synset_names[synset]
            caption = self.captions.get(uid) or self.captions.get(model, "")
            refs.append(ObjectRef(self.name, uid, label, self.labels.index(label), str(source), caption))
        return refs, errors

    def _load(self, ref: ObjectRef) -> ObjectRecord:
        source = Path(ref.source)
        mesh = load_mesh_file(source, bound=source.parent.parent, file_type="obj")
        return ObjectRecord(ref, mesh, None)
