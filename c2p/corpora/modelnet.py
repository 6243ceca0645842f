"""ModelNet10/40 reader (``.off`` meshes), world z-up as distributed.

On-disk layout (the Princeton zip, unpacked)::

    root/<class>/train/<class>_0001.off
    root/<class>/test/<class>_0627.off          (test numbering continues after train)
    root/captions.csv                           optional: uid,caption

Labels are the class folders that hold a train/ or test/ folder, sorted. uid = file stem.
The stored geometry is z-up: renderers want ``c2p.camera.rotate_zup_to_yup`` first
(``up_axis == "z"``). Files are read by :func:`c2p.corpora.meshio.load_off`, which accepts the
headers of the real files, where the counts sit on the ``OFF`` line itself (``OFF490 518 0``),
comments, polygons (fan triangulated) and trailing per-face colours.
"""

from __future__ import annotations

from pathlib import Path

from c2p.corpora.base import Corpus, CorpusError, ErrorRecord, ObjectRecord, ObjectRef, check_file, read_captions
from c2p.corpora.meshio import load_off

CAPTIONS = "captions.csv"


class ModelNetCorpus(Corpus):
    """ModelNet10/40 reader. ``root``: folder holding the class folders."""

    name = "modelnet"
    up_axis = "z"

    def __init__(self, root: str | Path, split: str = "train", name: str | None = None):
        super().__init__(root, split, name)
        self.labels = sorted(
            d.name
            for d in self.root.iterdir()
            if d.is_dir() and ((d / "train").is_dir() or (d / "test").is_dir())
        )
        if not self.labels:
            raise CorpusError(self.root, "no ModelNet class folders (<class>/train|test/) found")
        self.captions = read_captions(self.root / CAPTIONS)

    def _list(self) -> tuple[list[ObjectRef], list[ErrorRecord]]:
        splits = ["train", "test"] if self.split == "all" else [self.split]
        refs: list[ObjectRef] = []
        errors: list[ErrorRecord] = []
        for index, label in enumerate(self.labels):
            for split in splits:
                folder = self.root / label / split
                if not folder.is_dir():
                    continue
                for path in sorted(folder.iterdir()):
                    if path.name.startswith(".") or path.suffix.lower() != ".off":
                        continue
                    uid = path.stem
                    reason = check_file(path)
                    if reason is not None:
                        errors.append(ErrorRecord(self.name, uid, str(path), reason))
                        continue
                    refs.append(ObjectRef(self.name, uid, label, index, str(path), self.captions.get(uid, "")))
        return refs, errors

    def _load(self, ref: ObjectRef) -> ObjectRecord:
        return ObjectRecord(ref, load_off(Path(ref.source)), None)
