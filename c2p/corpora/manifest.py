"""Generic JSONL manifest reader: one object per line.

    {"path": "meshes/a.obj", "label": "chair", "caption": "a red chair", "uid": "a", "split": "train"}

``root`` is the ``.jsonl`` file. ``path`` (required) is absolute or relative to the manifest's
folder; ``label`` is required; ``caption``, ``uid`` (default: the file stem) and ``split``
(default "train") are optional. Meshes: .obj, .off, .glb, .gltf, .stl, .ply with faces.
Points: .npy ([N, 3] or [N, >3], first three columns), .ply without faces, .xyz/.txt/.pts
(whitespace or comma separated). Labels are the manifest's distinct labels, sorted.
The manifest says nothing about orientation: pass ``up_axis`` ("y" default, or "z").
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from c2p.corpora.base import Corpus, CorpusError, ErrorRecord, ObjectRecord, ObjectRef, check_file, check_points, require_file
from c2p.corpora.meshio import load_mesh_file, load_off, load_ply

MESH_SUFFIXES = {".obj", ".off", ".glb", ".gltf", ".stl", ".ply"}
POINT_SUFFIXES = {".npy", ".xyz", ".txt", ".pts"}


def load_geometry(path: Path):
    """(mesh or None, points or None) of a mesh or point file; raises CorpusError."""
    require_file(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            raw = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise CorpusError(path, f"unreadable .npy ({type(exc).__name__}: {exc})") from exc
        return None, check_points(path, raw)
    if suffix in (".xyz", ".txt", ".pts"):
        try:
            text = path.read_text(encoding="utf-8").replace(",", " ")
            raw = np.loadtxt(text.splitlines(), ndmin=2)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorpusError(path, f"unreadable point text file ({exc})") from exc
        return None, check_points(path, raw)
    if suffix == ".off":
        return load_off(path), None
    if suffix == ".ply":
        return load_ply(path)
    if suffix in MESH_SUFFIXES:
        return load_mesh_file(path, bound=path.parent, file_type=suffix[1:]), None
    raise CorpusError(path, f"file type {suffix!r}, expected one of {sorted(MESH_SUFFIXES | POINT_SUFFIXES)}")


class ManifestCorpus(Corpus):
    """JSONL manifest reader. ``root``: the manifest file. up_axis: "y" or "z"."""

    name = "manifest"
    root_is_file = True

    def __init__(self, root: str | Path, split: str = "train", name: str | None = None, up_axis: str = "y"):
        super().__init__(root, split, name)
        if up_axis not in ("y", "z"):
            raise ValueError(f"up_axis: {up_axis!r}, expected 'y' or 'z'")
        self.up_axis = up_axis
        reason = check_file(self.root)
        if reason is not None:
            raise CorpusError(self.root, f"manifest: {reason}")
        self.entries: list[tuple[int, dict | None, str]] = []  # (line number, record or None, error)
        for n, line in enumerate(self.root.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError(f"a JSON {type(rec).__name__}, expected an object")
                missing = [k for k in ("path", "label") if not rec.get(k)]
                if missing:
                    raise ValueError(f"missing {missing}")
                self.entries.append((n, rec, ""))
            except ValueError as exc:
                self.entries.append((n, None, f"line {n}: {exc}"))
        self.labels = sorted({str(rec["label"]) for _, rec, _ in self.entries if rec is not None})

    def _list(self) -> tuple[list[ObjectRef], list[ErrorRecord]]:
        refs: list[ObjectRef] = []
        errors: list[ErrorRecord] = []
        seen: set[str] = set()
        for n, rec, err in self.entries:
            if rec is None:
                errors.append(ErrorRecord(self.name, f"line-{n:06d}", str(self.root), err))
                continue
            if self.split != "all" and str(rec.get("split") or "train") != self.split:
                continue
            path = Path(str(rec["path"]))
            if not path.is_absolute():
                path = self.root.parent / path
            uid = str(rec.get("uid") or path.stem)
            if uid in seen:
                errors.append(ErrorRecord(self.name, uid, str(path), f"line {n}: duplicate uid"))
                continue
            seen.add(uid)
            reason = check_file(path)
            if reason is None and path.suffix.lower() not in MESH_SUFFIXES | POINT_SUFFIXES:
                reason = f"file type {path.suffix!r} not supported"
            if reason is not None:
                errors.append(ErrorRecord(self.name, uid, str(path), reason))
                continue
            label = str(rec["label"])
            refs.append(ObjectRef(self.name, uid, label, self.labels.index(label), str(path), str(rec.get("caption") or "")))
        return refs, errors

    def _load(self, ref: ObjectRef) -> ObjectRecord:
        mesh, points = load_geometry(Path(ref.source))
        return ObjectRecord(ref, mesh, points)
