"""Records and the base reader shared by every corpus.

A corpus is read in two steps: :meth:`Corpus.list` enumerates cheap :class:`ObjectRef`
entries (sorted by uid, so a planner can cut them into shards deterministically), and
:meth:`Corpus.load` turns one ref into an :class:`ObjectRecord` (mesh and/or points).
A bad object never stops the reading: ``list`` reports what it cannot enumerate as
:class:`ErrorRecord`, ``load`` raises :class:`CorpusError`, and :meth:`Corpus.records`
turns those into error records and keeps going.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

log = logging.getLogger(__name__)

SPLITS = ("train", "test", "all")


@dataclass(slots=True)
class ObjectRef:
    """Cheap listing entry of one object (slots: a 10^7-object listing is held in memory).

    uid: unique within the corpus (the sample key is ``<corpus>-<uid>``).
    label: class name; label_index: its index in ``Corpus.labels``.
    source: path of the file the object is read from. caption: free text, may be empty.
    """

    corpus: str
    uid: str
    label: str
    label_index: int
    source: str
    caption: str = ""


@dataclass
class ObjectRecord:
    """A loaded object.

    mesh: trimesh.Trimesh or trimesh.Scene (visual/material kept), None for point corpora.
    points: [N, 3] float32 where the corpus stores points (as stored, not normalised), else None.
    renders: released RGB view files (ShapeNet-55 parity path), ordered by view index, else None.
    """

    ref: ObjectRef
    mesh: Any
    points: np.ndarray | None
    renders: list[str] | None = None


@dataclass
class ErrorRecord:
    """An object that could not be listed or loaded: where it is and why."""

    corpus: str
    uid: str
    source: str
    reason: str


class CorpusError(Exception):
    """A corpus input is unusable. ``source``: the path; ``reason``: what is wrong."""

    def __init__(self, source: str | Path, reason: str):
        self.source = str(source)
        self.reason = reason
        super().__init__(f"{self.source}: {reason}")


class Corpus:
    """Base reader. Subclasses set ``labels`` in ``__init__`` and implement ``_list``/``_load``.

    name: corpus name in refs and keys; root: corpus directory (or table file);
    split: "train", "test" or "all"; labels: sorted class names (label_index indexes them);
    up_axis: "y" or "z", the up axis of the stored geometry (renderers expect y-up).
    """

    name: str = "corpus"
    up_axis: str = "y"
    root_is_file: bool = False  # the manifest reader's root is its .jsonl file

    def __init__(self, root: str | Path, split: str = "train", name: str | None = None):
        if split not in SPLITS:
            raise ValueError(f"split: {split!r}, expected one of {list(SPLITS)}")
        self.root = Path(root)
        if not self.root.exists():
            raise CorpusError(self.root, f"{type(self).__name__} root does not exist")
        if self.root_is_file != self.root.is_file():
            expected = "a file" if self.root_is_file else "a folder"
            raise CorpusError(self.root, f"{type(self).__name__} root is not {expected}")
        self.split = split
        if name is not None:
            self.name = name
        self.labels: list[str] = []

    # -- to implement ---------------------------------------------------------------
    def _list(self) -> tuple[list[ObjectRef], list[ErrorRecord]]:
        raise NotImplementedError

    def _load(self, ref: ObjectRef) -> ObjectRecord:
        raise NotImplementedError

    # -- public ---------------------------------------------------------------------
    def list(self) -> tuple[list[ObjectRef], list[ErrorRecord]]:
        """All objects of the split, sorted by uid, and the entries that could not be listed."""
        refs, errors = self._list()
        refs.sort(key=lambda r: r.uid)
        errors.sort(key=lambda e: (e.uid, e.source))
        return refs, errors

    def load(self, ref: ObjectRef) -> ObjectRecord:
        """Load one object. Raises CorpusError(source, reason) for any unusable input."""
        try:
            return self._load(ref)
        except CorpusError:
            raise
        except Exception as exc:  # a parser's own error: keep its message, name the file
            raise CorpusError(ref.source, f"{type(exc).__name__}: {exc}") from exc

    def records(self) -> Iterator[ObjectRecord | ErrorRecord]:
        """Listing errors first, then every object loaded in uid order (failures as ErrorRecord)."""
        refs, errors = self.list()
        yield from errors
        for ref in refs:
            try:
                yield self.load(ref)
            except CorpusError as exc:
                yield ErrorRecord(self.name, ref.uid, exc.source, exc.reason)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, root={str(self.root)!r}, split={self.split!r}, labels={len(self.labels)})"


# ------------------------------------------------------------------------- helpers


def check_file(path: Path) -> str | None:
    """Reason why ``path`` cannot be read as a file, or None if it looks readable."""
    if not path.exists():
        return "missing file"
    if path.is_dir():
        return "is a directory, expected a file"
    try:
        if path.stat().st_size == 0:
            return "empty file"
    except OSError as exc:
        return f"unreadable: {exc}"
    return None


def require_file(path: Path) -> None:
    reason = check_file(path)
    if reason is not None:
        raise CorpusError(path, reason)


def check_points(source: str | Path, points: Any, min_points: int = 1) -> np.ndarray:
    """Validate a stored point cloud. Returns [N, 3] float32 or raises CorpusError."""
    arr = np.asarray(points)
    if arr.ndim != 2 or arr.shape[-1] < 3:
        raise CorpusError(source, f"points of shape {arr.shape}, expected [N, 3] (or [N, >=3])")
    arr = arr[:, :3]
    if not np.issubdtype(arr.dtype, np.number):
        raise CorpusError(source, f"points of dtype {arr.dtype}, expected a float array")
    if arr.shape[0] < min_points:
        raise CorpusError(source, f"{arr.shape[0]} points, expected at least {min_points}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise CorpusError(source, f"{int((~np.isfinite(arr)).any(axis=1).sum())} points with NaN/inf coordinates")
    return np.ascontiguousarray(arr)


def read_table(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV (header line) or JSON (list of objects, or {uid: {...}} / {uid: label}) table."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        import json

        data = json.loads(text)
        if isinstance(data, dict):
            rows = []
            for uid, v in data.items():
                row = dict(v) if isinstance(v, dict) else {"label": v}
                row.setdefault("uid", uid)
                rows.append({k: "" if x is None else str(x) for k, x in row.items()})
            return rows
        if isinstance(data, list):
            return [{k: "" if x is None else str(x) for k, x in dict(r).items()} for r in data]
        raise CorpusError(path, f"JSON table of type {type(data).__name__}, expected a list or an object")
    return [dict(r) for r in csv.DictReader(text.splitlines())]


def read_captions(path: Path) -> dict[str, str]:
    """Optional captions table: CSV with columns uid,caption (or Text2Shape's modelId,description).

    Returns {uid: first caption}; {} if the file does not exist.
    """
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    for row in read_table(path):
        uid = row.get("uid") or row.get("modelId") or ""
        cap = row.get("caption") or row.get("description") or ""
        if uid and uid not in out:
            out[uid] = cap
    return out
