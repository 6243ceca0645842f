"""ScanObjectNN reader (``.h5`` with ``data`` [N, 2048, 3] and ``label`` [N]).

On-disk layout (the official h5 release)::

    root/training_objectdataset.h5, root/test_objectdataset.h5       (main_split, OBJ_BG)
    root/training_objectdataset_augmentedrot_scale75.h5, ...          (variant "objectdataset_augmentedrot_scale75")

``root`` is the split folder (e.g. ``h5_files/main_split``); ``variant`` picks the file pair.
:class:`ScanObjectNNRelease` (reader ``scanobjectnn_release``) reads the benchmark variants by
name (OBJ_ONLY, OBJ_BG, PB_T50_RS, ...) from ``h5_files/`` for evaluation, refusing whole files
whose arrays disagree; :func:`write_scanobjectnn` writes that layout.
The h5 label is an index into :data:`SCANOBJECTNN_CLASSES` (the release's order); ``labels`` is
that list sorted and ``label_index`` indexes it. uid = ``<split>-<row:05d>``. Points are
returned as stored; the original treats them as y-up (no rotation before rendering).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from c2p.corpora.arrays import ArrayCorpus, read_h5_clouds, read_names, write_names
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


# ----------------------------------------------------------------------------- the release's variants

# The benchmark variants of the h5 release (``h5_files/``): folder and file stem.
# main_split_nobg holds the objects without background (OBJ_ONLY); main_split with it (OBJ_BG)
# and its perturbed copies, of which PB_T50_RS (the hardest) is the one papers report.
VARIANTS: dict[str, tuple[str, str]] = {
    "OBJ_ONLY": ("main_split_nobg", "objectdataset"),
    "OBJ_BG": ("main_split", "objectdataset"),
    "PB_T25": ("main_split", "objectdataset_augmented25_norot"),
    "PB_T25_R": ("main_split", "objectdataset_augmented25rot"),
    "PB_T50_R": ("main_split", "objectdataset_augmentedrot"),
    "PB_T50_RS": ("main_split", "objectdataset_augmentedrot_scale75"),
}


def variant_files(root: Path, variant: str) -> tuple[Path, str]:
    """(split folder, file stem) of a variant name under ``root`` (``h5_files/`` or the split
    folder itself). ``variant``: a name of :data:`VARIANTS`; raises CorpusError otherwise."""
    if variant not in VARIANTS:
        raise CorpusError(root, f"ScanObjectNN variant {variant!r}; expected one of {sorted(VARIANTS)}")
    folder, stem = VARIANTS[variant]
    return (root / folder if (root / folder).is_dir() else root), stem


class ScanObjectNNRelease(ArrayCorpus):
    """One benchmark variant of the ScanObjectNN h5 release, whole files checked.

    ``root``: ``h5_files/`` (holding ``main_split/`` and ``main_split_nobg/``) or one split folder;
    ``variant``: OBJ_ONLY, OBJ_BG, PB_T25, PB_T25_R, PB_T50_R or PB_T50_RS. Class names: a
    ``shape_names.txt`` in the split folder or ``root`` if there is one, else
    :data:`SCANOBJECTNN_CLASSES`. Unlike :class:`ScanObjectNNCorpus` (a render input, where one
    bad row is skipped) a file whose arrays disagree is refused as a whole.
    """

    name = "scanobjectnn_release"
    up_axis = "y"

    def __init__(self, root: str | Path, split: str = "test", name: str | None = None, variant: str = "PB_T50_RS"):
        super().__init__(root, split, name)
        self.variant = variant
        folder, stem = variant_files(self.root, variant)
        names_file = next((p for p in (folder / "shape_names.txt", self.root / "shape_names.txt") if p.is_file()), None)
        self._set_classes(read_names(names_file) if names_file else SCANOBJECTNN_CLASSES)
        for s in ("train", "test") if split == "all" else (split,):
            path = h5_path(folder, s, stem)
            data, labels = read_h5_clouds(path, len(self.class_order), names_file or "the release's 15-class list")
            self._add_array(s, path, data, labels)


def write_scanobjectnn(root: str | Path, variant: str, split: str, clouds: np.ndarray, labels: np.ndarray,
                       shape_names: list[str] | None = None) -> Path:
    """Write one split of a variant as the release lays it out: ``root/<folder>/<prefix>_<stem>.h5``
    with data [N,P,3] float32 and label [N] (and ``shape_names.txt`` when the classes are not the
    release's 15). Returns the h5 path."""
    import h5py

    folder, stem = VARIANTS[variant]
    out = Path(root) / folder
    out.mkdir(parents=True, exist_ok=True)
    if shape_names is not None and list(shape_names) != SCANOBJECTNN_CLASSES:
        write_names(out / "shape_names.txt", shape_names)
    path = h5_path(out, split, stem)
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.asarray(clouds, dtype=np.float32))
        f.create_dataset("label", data=np.asarray(labels, dtype=np.int64))
    return path
