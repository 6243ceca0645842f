"""Objaverse reader: a local folder of ``.glb`` files plus a uid → label/caption table.

On-disk layout (as ``objaverse.load_objects`` leaves it, any nesting)::

    root/glbs/000-023/<uid>.glb
    table                                    CSV or JSON, one of:
      CSV with a header: uid, label (or category), optional caption, optional split
      JSON list: [{"uid": ..., "label": ..., "caption": ...}, ...]
      JSON object: {uid: {"label": ..., "caption": ...}} or {uid: label}
      JSON object of lists (Objaverse-LVIS annotations): {label: [uid, ...]}
    captions                                 optional CSV, Cap3D style: uid,caption (header optional)

``table`` defaults to the first of ``root/{labels,annotations,lvis-annotations,metadata}.{csv,json}``.
Labels are the table's distinct labels, sorted. A table row whose ``.glb`` is missing is an
error record. Splits come from a ``split`` column; without one every object is "train".
glTF is y-up, so ``up_axis == "y"``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from c2p.corpora.base import (
    Corpus,
    CorpusError,
    ErrorRecord,
    ObjectRecord,
    ObjectRef,
    check_file,
    read_table,
)
from c2p.corpora.meshio import load_mesh_file

TABLE_NAMES = ("labels", "annotations", "lvis-annotations", "metadata")


def read_label_table(path: Path) -> list[dict[str, str]]:
    """Rows {uid, label, caption, split} of an Objaverse label table (formats in the module doc)."""
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
            return [{"uid": str(u), "label": str(lbl)} for lbl, uids in data.items() for u in uids]
    rows = read_table(path)
    out = []
    for r in rows:
        uid = r.get("uid") or r.get("object_uid") or r.get("id") or ""
        label = r.get("label") or r.get("category") or r.get("class") or ""
        out.append({"uid": uid.strip(), "label": label.strip(), "caption": (r.get("caption") or "").strip(),
                    "split": (r.get("split") or "").strip()})
    return out


def read_cap3d(path: Path) -> dict[str, str]:
    """uid → caption from a CSV with or without a ``uid,caption`` header (Cap3D has none)."""
    out: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            if len(row) >= 2 and row[0] != "uid":
                out.setdefault(row[0].strip(), row[1].strip())
    return out


class ObjaverseCorpus(Corpus):
    """Objaverse reader. ``root``: folder searched recursively for ``<uid>.glb``.

    table: label table path (default: found in root, see module doc); captions: optional CSV.
    """

    name = "objaverse"
    up_axis = "y"

    def __init__(self, root: str | Path, split: str = "train", name: str | None = None,
                 table: str | Path | None = None, captions: str | Path | None = None):
        super().__init__(root, split, name)
        if table is None:
            found = [self.root / f"{n}.{ext}" for n in TABLE_NAMES for ext in ("csv", "json")]
            found = [p for p in found if p.is_file()]
            if not found:
                raise CorpusError(self.root, f"no label table ({', '.join(TABLE_NAMES)}.csv|json); pass table=PATH")
            table = found[0]
        self.table = Path(table)
        reason = check_file(self.table)
        if reason is not None:
            raise CorpusError(self.table, f"label table: {reason}")
        try:
            self.rows = read_label_table(self.table)
        except (ValueError, UnicodeDecodeError, csv.Error) as exc:
            raise CorpusError(self.table, f"unreadable label table ({type(exc).__name__}: {exc})") from exc
        self.captions = read_cap3d(Path(captions)) if captions else {}
        self.labels = sorted({r["label"] for r in self.rows if r["label"]})
        self._glbs: dict[str, Path] | None = None

    def glb_paths(self) -> dict[str, Path]:
        """uid → .glb path of every file under root (cached)."""
        if self._glbs is None:
            self._glbs = {p.stem: p for p in sorted(self.root.rglob("*.glb"))}
        return self._glbs

    def _list(self) -> tuple[list[ObjectRef], list[ErrorRecord]]:
        glbs = self.glb_paths()
        refs: list[ObjectRef] = []
        errors: list[ErrorRecord] = []
        seen: set[str] = set()
        for r in self.rows:
            uid = r["uid"]
            split = r.get("split") or "train"
            if self.split != "all" and split != self.split:
                continue
            if not uid or uid in seen:
                errors.append(ErrorRecord(self.name, uid, str(self.table), "duplicate uid" if uid else "row without uid"))
                continue
            seen.add(uid)
            if not r["label"]:
                errors.append(ErrorRecord(self.name, uid, str(self.table), "row without label"))
                continue
            path = glbs.get(uid, self.root / f"{uid}.glb")
            reason = check_file(path)
            if reason is not None:
                errors.append(ErrorRecord(self.name, uid, str(path), reason))
                continue
            caption = r.get("caption") or self.captions.get(uid, "")
            refs.append(ObjectRef(self.name, uid, r["label"], self.labels.index(r["label"]), str(path), caption))
        return refs, errors

    def _load(self, ref: ObjectRef) -> ObjectRecord:
        path = Path(ref.source)
        return ObjectRecord(ref, load_mesh_file(path, bound=path.parent, file_type="glb"), None)
