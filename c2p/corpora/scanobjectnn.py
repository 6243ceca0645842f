"""ScanObjectNN reader (``.h5`` with ``data`` [N, 2048, 3] and ``label`` [N]).

On-disk layout (the official h5 release)::

    root/training_objectdataset.h5, root/test_objectdataset.h5       (main_split, OBJ_BG)
    root/training_objectdataset_augmentedrot_scale75.h5, ...          (variant "objectdataset_augmentedrot_scale75")

``root`` is the split folder (e.g. ``h5_files/main_split``); ``variant`` picks the file pair.
The h5 label is an index into :data:`SCANOBJECTNN_CLASSES` (the release's order); ``labels`` is
that list sorted and ``label_index`` indexes it. uid = ``<split>-<row:05d>``. Points are
returned as stored; the original treats them as y-up (no rotation before rendering).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from c2p.corpora.base import Corpus, CorpusError, ErrorRecord, ObjectRecord, ObjectRef, check_file, check_points

SCANOBJECTNN_CLASSES: list[str] = [
    "bag", "bin", "box", "cabinet", "chair", "desk", "display", "door",
    "shelf", "table", "bed", "pillow", "sink", "sofa", "toilet",
]  # h5 label order
FILE_PREFIX = {"train": "training", "test": "test"}


def h5_path(root: Path, split: str, variant: str) -> Path:
    return root / f"{FILE_PREFIX[split]}_{variant}.h5"


class ScanObjectNNCorpus(Corpus):
    """ScanObjectNN reader. variant: file stem after the split prefix (default OBJ_BG main split)."""

    name = "scanobjectnn"
    up_axis = "y"

    def __init__(self, root: str | Path, split: str = "train", name: str | None = None,
                 variant: str = "objectdataset", classes: list[str] | None = None):
        super().__init__(root, split, name)
        self.variant = variant
        self.class_order = list(classes or SCANOBJECTNN_CLASSES)
        self.labels = sorted(self.class_order)

    def _files(self) -> list[tuple[str, Path]]:
        splits = ["train", "test"] if self.split == "all" else [self.split]
        return [(s, h5_path(self.root, s, self.variant)) for s in splits]

    def _list(self) -> tuple[list[ObjectRef], list[ErrorRecord]]:
        import h5py

        refs: list[ObjectRef] = []
        errors: list[ErrorRecord] = []
        for split, path in self._files():
            reason = check_file(path)
            labels = None
            if reason is None:
                try:
                    with h5py.File(path, "r") as f:
                        if "data" not in f or "label" not in f:
                            reason = f"h5 members {sorted(f.keys())}, expected 'data' and 'label'"
                        else:
                            labels = np.asarray(f["label"][()]).reshape(-1)
                            n = f["data"].shape[0]
                            if f["data"].ndim != 3 or len(labels) != n:
                                reason = f"data {f['data'].shape} and label {labels.shape}: expected [N,P,3] and [N]"
                except OSError as exc:
                    reason = f"unreadable h5 ({exc})"
            if reason is not None:
                errors.append(ErrorRecord(self.name, f"{split}-*", str(path), reason))
                continue
            for row, raw in enumerate(labels):
                uid = f"{split}-{row:05d}"
                k = int(raw)
                if not 0 <= k < len(self.class_order):
                    errors.append(ErrorRecord(self.name, uid, f"{path}[{row}]",
                                              f"label {k}, expected 0..{len(self.class_order) - 1}"))
                    continue
                label = self.class_order[k]
                refs.append(ObjectRef(self.name, uid, label, self.labels.index(label), f"{path}[{row}]"))
        return refs, errors

    def _load(self, ref: ObjectRef) -> ObjectRecord:
        import h5py

        split, row = ref.uid.split("-")
        path = h5_path(self.root, split, self.variant)
        try:
            with h5py.File(path, "r") as f:
                raw = f["data"][int(row)]
        except (OSError, KeyError, IndexError, ValueError) as exc:
            raise CorpusError(ref.source, f"unreadable h5 row ({type(exc).__name__}: {exc})") from exc
        return ObjectRecord(ref, None, check_points(ref.source, raw))
