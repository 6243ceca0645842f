"""Released evaluation sets stored as arrays: one reader base and the checks every such file passes.

The released evaluation files (ModelNet40's 2048-point HDF5, ScanObjectNN's h5 variants,
OpenShape's ``test_pc.npy`` and Objaverse-LVIS point files) hold a whole split as arrays:
clouds ``[N,P,C]`` (C >= 3: xyz first, then normals or colour), labels ``[N]`` (or ``[N,1]``)
indexing a class-name list. A file whose arrays disagree (counts, label range, shapes) is
refused as a whole with :class:`~c2p.corpora.base.CorpusError` naming the file and the
mismatch: a silently truncated or misaligned test set gives a number that looks right.

:class:`ArrayCorpus` turns checked arrays into the ordinary corpus interface (refs listed in
row order as ``<split>-<row:05d>``, :meth:`~c2p.corpora.base.Corpus.load` returns the row's xyz),
so evaluation reads a released file through the same :func:`c2p.corpora.open_corpus` as a mesh corpus.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from c2p.corpora.base import (
    Corpus,
    CorpusError,
    ErrorRecord,
    ObjectRecord,
    ObjectRef,
    check_points,
    require_file,
)

__all__ = ["ArrayCorpus", "check_clouds", "check_labels", "read_h5_clouds", "read_names", "write_names"]


def read_names(path: Path) -> list[str]:
    """Class names, one per line (``shape_names.txt``); blank lines ignored. Refuses repeats."""
    require_file(path)
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise CorpusError(path, "no class names; expected one name per line")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CorpusError(path, f"class names {dup} repeated; expected each name once")
    return names


def write_names(path: Path, names: Sequence[str]) -> None:
    """``shape_names.txt``: one class name per line, in label order."""
    path.write_text("".join(f"{n}\n" for n in names), encoding="utf-8")


def check_clouds(source: str | Path, data: np.ndarray, member: str = "data") -> np.ndarray:
    """``data``: clouds [N,P,C] with C >= 3 and N, P >= 1 (a numeric array), else CorpusError."""
    arr = np.asarray(data)
    if arr.ndim != 3 or arr.shape[2] < 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise CorpusError(source, f"{member} of shape {list(arr.shape)}; expected [N,P,3] (or [N,P,>3]) with N, P >= 1")
    if not np.issubdtype(arr.dtype, np.number):
        raise CorpusError(source, f"{member} of dtype {arr.dtype}; expected a float array")
    return arr


def check_labels(source: str | Path, labels: np.ndarray, count: int, num_classes: int, names_source: str | Path) -> np.ndarray:
    """Labels [N] or [N,1] of integers in [0, num_classes) with N == ``count``; returns [N] int64.

    ``names_source``: where the class list came from (named in the range error).
    """
    arr = np.asarray(labels)
    if arr.ndim == 2 and arr.shape[1] == 1:  # the HDF5 releases store [N,1]
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise CorpusError(source, f"label of shape {list(np.asarray(labels).shape)}; expected [N] or [N,1]")
    if arr.shape[0] != count:
        raise CorpusError(source, f"{count} point clouds but {arr.shape[0]} labels; expected one label per cloud")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(arr == np.round(arr)):
            raise CorpusError(source, f"label of dtype {arr.dtype}; expected integer class indices")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise CorpusError(
            source, f"labels in [{arr.min()}, {arr.max()}]; expected 0..{num_classes - 1} (the {num_classes} classes of {names_source})"
        )
    return arr


def read_h5_clouds(path: Path, num_classes: int, names_source: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(data [N,P,3] float32, labels [N] int64)`` of a release h5 file with ``data`` and ``label``
    members (ModelNet40's HDF5 release, ScanObjectNN), checked as :func:`check_clouds` and
    :func:`check_labels` do; raises CorpusError naming the file."""
    import h5py

    require_file(path)
    try:
        with h5py.File(path, "r") as f:
            if "data" not in f or "label" not in f:
                raise CorpusError(path, f"h5 members {sorted(f.keys())}; expected 'data' and 'label'")
            data = check_clouds(path, f["data"][()])
            return data, check_labels(path, f["label"][()], data.shape[0], num_classes, names_source)
    except OSError as exc:
        raise CorpusError(path, f"unreadable h5 ({exc})") from exc


class ArrayCorpus(Corpus):
    """A released split held as arrays. Subclasses call :meth:`_set_rows` from ``__init__``.

    ``class_order``: class names in the file's label order; ``labels``: the same names sorted
    (the base contract; ``label_index`` indexes them). ``splits``: the splits the release has.
    """

    splits: tuple[str, ...] = ("train", "test")

    def __init__(self, root: str | Path, split: str = "test", name: str | None = None):
        super().__init__(root, split, name)
        if split != "all" and split not in self.splits:
            raise CorpusError(self.root, f"split {split!r}: {type(self).__name__} has only {list(self.splits)}")
        self.class_order: list[str] = []
        self._rows: list[tuple[str, str, int, int, str]] = []  # (uid, class name, array, row, source)
        self._clouds: list[np.ndarray] = []  # one array per source, rows indexed by _rows
        self._errors: list[ErrorRecord] = []
        self._by_uid: dict[str, tuple[int, int]] | None = None

    def _set_classes(self, class_order: Sequence[str]) -> None:
        self.class_order = list(class_order)
        self.labels = sorted(self.class_order)
        self._index = {c: i for i, c in enumerate(self.labels)}

    def _add_array(self, split: str, source: str | Path, clouds: np.ndarray, labels: np.ndarray, first_row: int = 0) -> int:
        """Rows of one checked file: ``clouds`` [N,P,C], ``labels`` [N] into ``class_order``.
        uids continue from ``first_row`` (several files make one split). Returns N."""
        k = len(self._clouds)
        self._clouds.append(clouds)
        for row, lab in enumerate(labels.tolist()):
            self._rows.append((f"{split}-{first_row + row:05d}", self.class_order[lab], k, row, str(source)))
        return len(labels)

    def _list(self) -> tuple[list[ObjectRef], list[ErrorRecord]]:
        refs = [ObjectRef(self.name, uid, label, self._index[label], f"{src}[{row}]") for uid, label, _, row, src in self._rows]
        return refs, list(self._errors)

    def _load(self, ref: ObjectRef) -> ObjectRecord:
        if self._by_uid is None:
            self._by_uid = {uid: (k, row) for uid, _, k, row, _ in self._rows}
        k, row = self._by_uid[ref.uid]
        cloud = self._clouds[k][row]
        return ObjectRecord(ref, None, check_points(ref.source, cloud))
