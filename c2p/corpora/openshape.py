"""OpenShape's released evaluation files (``meta_data/`` of OpenShape's data release), read and written.

The layouts, as OpenShape's ``src/data.py`` reads them (``ModelNet40Test``, ``ObjaverseLVIS``)::

    meta_data/modelnet40/test_split.json     [{"name": "airplane_0627", "category": "airplane"}, ...]  (2,468)
    meta_data/modelnet40/test_pc.npy         object array, one dict per row of test_split.json:
                                             {"xyz": [10000,3] float, "rgb": [10000,3] 0..255}
    meta_data/modelnet40/cat_name_pt_feat.npy   optional pickled {category: {...text features}}: its
                                             key order is the label order (else categories sorted)
    meta_data/split/lvis.json                [{"uid": ..., "category": ..., "data_path": ..., "group": ...}, ...]
    <data_path>                              per object: pickled dict {"xyz": [P,3], "rgb": [P,3], ...}

Objaverse-LVIS has 1,156 categories (sorted, as OpenShape indexes them). A ``data_path`` is
used as written when it exists, else relative to ``root``, else a file of the same name
anywhere under ``root`` (the release's absolute paths name the authors' disks).

OpenShape stores z-up clouds and swaps y and z before encoding (``y_up: True``): ``up_axis ==
"z"``. ``.npy`` dicts are pickles (``allow_pickle=True``): read only files you trust.

Refusals (CorpusError naming the file): ``test_pc.npy`` rows ≠ ``test_split.json`` entries, a
category missing from the category list, xyz and rgb of different lengths, xyz not [P,3],
an lvis.json entry without uid/category/data_path, a repeated uid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from c2p.corpora.arrays import ArrayCorpus
from c2p.corpora.base import (
    Corpus,
    CorpusError,
    ErrorRecord,
    ObjectRecord,
    ObjectRef,
    check_file,
    check_points,
    require_file,
)

__all__ = ["OpenShapeModelNet40", "OpenShapeLVIS", "write_openshape_modelnet40", "write_openshape_lvis", "check_xyz_rgb"]


def _load_pickled(path: Path) -> Any:
    require_file(path)
    try:
        data = np.load(path, allow_pickle=True)
    except (OSError, ValueError, EOFError) as exc:
        raise CorpusError(path, f"unreadable .npy ({type(exc).__name__}: {exc})") from exc
    return data.item() if isinstance(data, np.ndarray) and data.dtype == object and data.ndim == 0 else data


def _read_json_list(path: Path, keys: Sequence[str]) -> list[dict]:
    require_file(path)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorpusError(path, f"unreadable JSON ({exc})") from exc
    if not isinstance(rows, list):
        raise CorpusError(path, f"a JSON {type(rows).__name__}; expected a list of objects with {list(keys)}")
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or any(not r.get(k) for k in keys):
            raise CorpusError(path, f"entry {i} is {r!r}; expected an object with non-empty {list(keys)}")
    return rows


def check_xyz_rgb(source: str | Path, item: Any) -> np.ndarray:
    """One OpenShape cloud: a dict with 'xyz' [P,3] and optional 'rgb' [P,3] (or an array [P,>=3]).
    Returns xyz [P,3] float32; refuses xyz/rgb of different lengths naming ``source``."""
    if isinstance(item, dict):
        if "xyz" not in item:
            raise CorpusError(source, f"cloud with keys {sorted(item)}; expected 'xyz' (and 'rgb')")
        xyz = np.asarray(item["xyz"])
        if xyz.ndim != 2 or xyz.shape[1] != 3:
            raise CorpusError(source, f"xyz of shape {list(xyz.shape)}; expected [P,3]")
        rgb = item.get("rgb")
        if rgb is not None and np.asarray(rgb).shape != xyz.shape:
            raise CorpusError(source, f"xyz {list(xyz.shape)} and rgb {list(np.asarray(rgb).shape)} disagree; expected one colour per point")
        return check_points(source, xyz)
    return check_points(source, item)


def _modelnet_root(root: Path) -> Path:
    return root / "modelnet40" if (root / "modelnet40" / "test_split.json").is_file() else root


class OpenShapeModelNet40(ArrayCorpus):
    """OpenShape's ModelNet40 test set. ``root``: ``meta_data/modelnet40`` (or ``meta_data``)."""

    name = "openshape_modelnet40"
    up_axis = "z"
    splits = ("test",)

    def __init__(self, root: str | Path, split: str = "test", name: str | None = None):
        super().__init__(root, split, name)
        base = _modelnet_root(self.root)
        split_file, pc_file, cat_file = base / "test_split.json", base / "test_pc.npy", base / "cat_name_pt_feat.npy"
        rows = _read_json_list(split_file, ("name", "category"))
        if cat_file.is_file():
            feats = _load_pickled(cat_file)
            if not isinstance(feats, dict):
                raise CorpusError(cat_file, f"a pickled {type(feats).__name__}; expected a dict category → text features")
            order, where = [str(k) for k in feats], cat_file
        else:
            order, where = sorted({str(r["category"]) for r in rows}), split_file
        self._set_classes(order)
        unknown = sorted({r["category"] for r in rows} - set(order))
        if unknown:
            raise CorpusError(split_file, f"categories {unknown[:5]} are not in the category list of {where}")
        pcs = _load_pickled(pc_file)
        if len(pcs) != len(rows):
            raise CorpusError(pc_file, f"{len(pcs)} point clouds but {split_file.name} has {len(rows)} entries; expected one cloud per entry")
        xyz = [check_xyz_rgb(f"{pc_file}[{i}]", item) for i, item in enumerate(pcs)]
        labels = np.array([order.index(r["category"]) for r in rows], dtype=np.int64)
        self._add_array("test", pc_file, xyz, labels)  # type: ignore[arg-type]  (a list of [P,3] rows)
        self.names = [str(r["name"]) for r in rows]


def _lvis_file(root: Path) -> Path:
    for p in (root / "lvis.json", root / "split" / "lvis.json"):
        if p.is_file():
            return p
    raise CorpusError(root, "no lvis.json or split/lvis.json; expected OpenShape's Objaverse-LVIS split")


class OpenShapeLVIS(Corpus):
    """OpenShape's Objaverse-LVIS test set. ``root``: ``meta_data`` (or the folder of lvis.json)
    and the per-object point files below it (or wherever ``data_path`` points)."""

    name = "openshape_lvis"
    up_axis = "z"
    splits = ("test",)

    def __init__(self, root: str | Path, split: str = "test", name: str | None = None):
        super().__init__(root, split, name)
        if split not in ("test", "all"):
            raise CorpusError(self.root, f"split {split!r}: Objaverse-LVIS has only ['test']")
        self.table = _lvis_file(self.root)
        self.rows = _read_json_list(self.table, ("uid", "category", "data_path"))
        seen: set[str] = set()
        for i, r in enumerate(self.rows):
            if r["uid"] in seen:
                raise CorpusError(self.table, f"entry {i}: uid {r['uid']!r} repeated; expected each object once")
            seen.add(r["uid"])
        self.labels = sorted({str(r["category"]) for r in self.rows})
        self._by_name: dict[str, Path] | None = None

    def resolve(self, data_path: str) -> Path:
        """Where an entry's point file is (see the module doc); the path as written if nowhere."""
        p = Path(data_path)
        for cand in (p, self.root / data_path.lstrip("/")):
            if cand.is_file():
                return cand
        if self._by_name is None:
            self._by_name = {f.name: f for f in sorted(self.root.rglob("*.npy"))}
        return self._by_name.get(p.name, p)

    def _list(self) -> tuple[list[ObjectRef], list[ErrorRecord]]:
        index = {c: i for i, c in enumerate(self.labels)}
        refs, errors = [], []
        for r in self.rows:
            path = self.resolve(str(r["data_path"]))
            reason = check_file(path)
            if reason is not None:
                errors.append(ErrorRecord(self.name, r["uid"], str(path), reason))
                continue
            refs.append(ObjectRef(self.name, str(r["uid"]), str(r["category"]), index[str(r["category"])], str(path)))
        return refs, errors

    def _load(self, ref: ObjectRef) -> ObjectRecord:
        return ObjectRecord(ref, None, check_xyz_rgb(ref.source, _load_pickled(Path(ref.source))))


def _cloud(xyz: np.ndarray, rgb: np.ndarray | None) -> dict:
    xyz = np.asarray(xyz, dtype=np.float32)
    return {"xyz": xyz, "rgb": np.asarray(rgb if rgb is not None else np.full_like(xyz, 102.0), dtype=np.float32)}


def write_openshape_modelnet40(root: str | Path, names: Sequence[str], categories: Sequence[str], clouds: Sequence[np.ndarray],
                               rgb: Sequence[np.ndarray] | None = None) -> Path:
    """``root/modelnet40/{test_split.json, test_pc.npy}``: entry i is {name, category} and cloud i
    ({"xyz": [P,3], "rgb": [P,3] 0..255; grey when ``rgb`` is None}). Returns the modelnet40 folder."""
    out = Path(root) / "modelnet40"
    out.mkdir(parents=True, exist_ok=True)
    (out / "test_split.json").write_text(json.dumps([{"name": n, "category": c} for n, c in zip(names, categories)]), encoding="utf-8")
    pcs = np.empty(len(clouds), dtype=object)
    for i, xyz in enumerate(clouds):
        pcs[i] = _cloud(xyz, None if rgb is None else rgb[i])
    np.save(out / "test_pc.npy", pcs, allow_pickle=True)
    return out


def write_openshape_lvis(root: str | Path, uids: Sequence[str], categories: Sequence[str], clouds: Sequence[np.ndarray]) -> Path:
    """``root/split/lvis.json`` and one ``root/objaverse/<uid>.npy`` dict per object, ``data_path``
    written relative to ``root`` as the readers resolve it. Returns lvis.json's path."""
    root = Path(root)
    (root / "split").mkdir(parents=True, exist_ok=True)
    (root / "objaverse").mkdir(parents=True, exist_ok=True)
    entries = []
    for uid, cat, xyz in zip(uids, categories, clouds):
        rel = f"objaverse/{uid}.npy"
        np.save(root / rel, np.array(_cloud(xyz, None), dtype=object), allow_pickle=True)
        entries.append({"uid": uid, "category": cat, "data_path": rel, "group": "objaverse"})
    path = root / "split" / "lvis.json"
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path
