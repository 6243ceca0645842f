"""ShapeNet-55 point clouds (Point-BERT release) paired with CLIP2Point's released renders.

On-disk layout (as CLIP2Point's ``data/``)::

    root/shapenet_pc/<synsetId>-<modelId>.npy        float [8192, 3] per object
    root/ShapeNet-55/train.txt, test.txt             one "<synsetId>-<modelId>.npy" per line
    renders/<synsetId>_<modelId>/<v>.png             released RGB views v = 0..9 (the 10-view set)

``renders`` defaults to ``root/rendering`` or, as in the original repository where
``data/rendering`` sits beside ``data/ShapeNet55``, ``root/../rendering``. When a render
folder is known every object must have its ``<v>.png`` files: an object without its folder
(or with a view missing) is an error record, because the parity path trains on exactly
those views. Pass ``renders=False`` to read points only (``ObjectRecord.renders`` is None).

Labels are the ShapeNetCore names of the synsets in train.txt ∪ test.txt, sorted (a
``taxonomy.json`` in root overrides the built-in names). uid = ``<synsetId>-<modelId>``.
Points are returned as stored (the original normalises with ``pc_norm`` at load time:
use :func:`c2p.geometry.normalize_unit_sphere`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from c2p.corpora.base import (
    Corpus,
    CorpusError,
    ErrorRecord,
    ObjectRecord,
    ObjectRef,
    check_file,
    check_points,
    read_captions,
    require_file,
)
from c2p.corpora.shapenet import synset_label

log = logging.getLogger(__name__)

NUM_VIEWS = 10
POINTS_DIR = "shapenet_pc"
LISTS_DIR = "ShapeNet-55"
CAPTIONS = "captions.csv"

# The 55 ShapeNetCore synsets of ShapeNet-55 and the names used as class prompts.
SHAPENET55_NAMES: dict[str, str] = {
    "02691156": "airplane", "02747177": "trash bin", "02773838": "bag", "02801938": "basket",
    "02808440": "bathtub", "02818832": "bed", "02828884": "bench", "02843684": "birdhouse",
    "02871439": "bookshelf", "02876657": "bottle", "02880940": "bowl", "02924116": "bus",
    "02933112": "cabinet", "02942699": "camera", "02946921": "can", "02954340": "cap",
    "02958343": "car", "02992529": "cellphone", "03001627": "chair", "03046257": "clock",
    "03085013": "keyboard", "03207941": "dishwasher", "03211117": "display", "03261776": "earphone",
    "03325088": "faucet", "03337140": "file cabinet", "03467517": "guitar", "03513137": "helmet",
    "03593526": "jar", "03624134": "knife", "03636649": "lamp", "03642806": "laptop",
    "03691459": "loudspeaker", "03710193": "mailbox", "03759954": "microphone", "03761084": "microwave",
    "03790512": "motorbike", "03797390": "mug", "03928116": "piano", "03938244": "pillow",
    "03948459": "pistol", "03991062": "flowerpot", "04004475": "printer", "04074963": "remote control",
    "04090263": "rifle", "04099429": "rocket", "04225987": "skateboard", "04256520": "sofa",
    "04330267": "stove", "04379243": "table", "04401088": "telephone", "04460130": "tower",
    "04468005": "train", "04530566": "watercraft", "04554684": "washer",
}


class ShapeNet55Corpus(Corpus):
    """ShapeNet-55 reader. ``root``: folder with shapenet_pc/ and ShapeNet-55/.

    renders: folder of ``<synset>_<model>/<v>.png`` (None: auto-detect; False: points only).
    views: views per object expected in each render folder.
    """

    name = "shapenet55"
    up_axis = "y"

    def __init__(self, root: str | Path, split: str = "train", name: str | None = None,
                 renders: str | Path | bool | None = None, views: int = NUM_VIEWS):
        super().__init__(root, split, name)
        self.points_dir = self.root / POINTS_DIR
        if not self.points_dir.is_dir():
            raise CorpusError(self.points_dir, "missing ShapeNet-55 point folder (expected root/shapenet_pc/)")
        self.views = int(views)
        if renders is False:
            self.renders_dir: Path | None = None
        elif renders is None or renders is True:
            found = [p for p in (self.root / "rendering", self.root.parent / "rendering") if p.is_dir()]
            self.renders_dir = found[0] if found else None
            if self.renders_dir is None:
                if renders is True:
                    raise CorpusError(self.root / "rendering", "no render folder found (root/rendering or root/../rendering)")
                log.warning("%s: no rendering/ folder: reading points only", self.root)
        else:
            self.renders_dir = Path(renders)
            if not self.renders_dir.is_dir():
                raise CorpusError(self.renders_dir, "render folder does not exist")
        names = dict(SHAPENET55_NAMES)
        tax = self.root / "taxonomy.json"
        if tax.is_file():
            names.update({str(t["synsetId"]).zfill(8): synset_label(t["name"]) for t in json.loads(tax.read_text())})
        self.synset_names = names
        self._lists = {s: self._read_list(s) for s in ("train", "test")}
        synsets = {line.split("-", 1)[0] for lines in self._lists.values() for line in lines}
        self.labels = sorted({names.get(s, s) for s in synsets})
        self.captions = read_captions(self.root / CAPTIONS)

    def _read_list(self, split: str) -> list[str]:
        path = self.root / LISTS_DIR / f"{split}.txt"
        require_file(path)
        return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]

    def render_files(self, uid: str) -> list[Path]:
        """The released view files of ``uid`` (``<synset>_<model>/<v>.png``), view order."""
        assert self.renders_dir is not None
        return [self.renders_dir / uid.replace("-", "_", 1) / f"{v}.png" for v in range(self.views)]

    def _list(self) -> tuple[list[ObjectRef], list[ErrorRecord]]:
        lines = self._lists["train"] + self._lists["test"] if self.split == "all" else self._lists[self.split]
        refs: list[ObjectRef] = []
        errors: list[ErrorRecord] = []
        seen: set[str] = set()
        for line in lines:
            uid = line[:-4] if line.endswith(".npy") else line
            source = self.points_dir / f"{uid}.npy"
            synset = uid.split("-", 1)[0]
            if "-" not in uid or uid in seen:
                errors.append(ErrorRecord(self.name, uid, str(source),
                                          "duplicate list entry" if uid in seen else "list entry is not '<synsetId>-<modelId>.npy'"))
                continue
            seen.add(uid)
            reason = check_file(source)
            if reason is None and self.renders_dir is not None:
                folder = self.render_files(uid)[0].parent
                if not folder.is_dir():
                    source, reason = folder, "missing render folder"
            if reason is not None:
                errors.append(ErrorRecord(self.name, uid, str(source), reason))
                continue
            label = self.synset_names.get(synset, synset)
            refs.append(ObjectRef(self.name, uid, label, self.labels.index(label), str(self.points_dir / f"{uid}.npy"),
                                  self.captions.get(uid, "")))
        return refs, errors

    def _load(self, ref: ObjectRef) -> ObjectRecord:
        source = Path(ref.source)
        require_file(source)
        try:
            raw = np.load(source, allow_pickle=False)
        except Exception as exc:
            raise CorpusError(source, f"unreadable .npy ({type(exc).__name__}: {exc})") from exc
        points = check_points(source, raw)
        renders = None
        if self.renders_dir is not None:
            files = self.render_files(ref.uid)
            for f in files:
                reason = check_file(f)
                if reason is not None:
                    raise CorpusError(f, f"render view: {reason} ({self.views} views expected)")
            renders = [str(f) for f in files]
        return ObjectRecord(ref, None, points, renders)
