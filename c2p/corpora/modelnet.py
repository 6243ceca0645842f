"""ModelNet10/40 reader (``.off`` meshes), world z-up as distributed.

On-disk layout (the Princeton zip, unpacked)::

    root/<class>/train/<class>_0001.off
    root/<class>/test/<class>_0627.off          (test numbering continues after train)
    root/captions.csv                           optional: uid,caption

Labels are the class folders that hold a train/ or test/ folder, sorted. uid = file stem.
The stored geometry is z-up: renderers want ``c2p.camera.rotate_zup_to_yup`` first
(``up_axis == "z"``). The OFF parser accepts the headers of the real files, where the
counts sit on the ``OFF`` line itself (``OFF490 518 0``), comments, polygons (fan
triangulated) and trailing per-face colours.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from c2p.corpora.base import (
    Corpus,
    CorpusError,
    ErrorRecord,
    ObjectRecord,
    ObjectRef,
    check_file,
    check_mesh,
    read_captions,
    require_file,
)

CAPTIONS = "captions.csv"


def parse_off(data: bytes | str, source: str | Path = "<off>") -> tuple[np.ndarray, np.ndarray]:
    """Parse an OFF file. Returns (vertices [V,3] float64, faces [F,3] int64 triangles).

    Raises CorpusError(source, reason) naming what is wrong (header, counts, indices, NaN).
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("ascii")
        except UnicodeDecodeError as exc:
            raise CorpusError(source, f"not an ASCII OFF file ({exc.reason} at byte {exc.start})") from exc
    lines = []
    for line in data.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    if not lines:
        raise CorpusError(source, "empty OFF file")
    head = lines[0]
    if not head.startswith("OFF"):
        raise CorpusError(source, f"header {head[:40]!r}, expected a line starting with 'OFF'")
    rest = head[3:].split()  # counts on the OFF line itself: "OFF490 518 0"
    pos = 1
    if not rest:
        if len(lines) < 2:
            raise CorpusError(source, "no vertex/face counts after the OFF header")
        rest = lines[1].split()
        pos = 2
    try:
        counts = [int(x) for x in rest[:3]]
        nv, nf = counts[0], counts[1]
    except (ValueError, IndexError) as exc:
        raise CorpusError(source, f"counts {' '.join(rest)!r}, expected 'V F E' integers") from exc
    if nv <= 0 or nf <= 0:
        raise CorpusError(source, f"{nv} vertices and {nf} faces, expected both > 0")
    if len(lines) < pos + nv + nf:
        raise CorpusError(source, f"truncated: header says {nv} vertices + {nf} faces, file has {len(lines) - pos} data lines")
    verts = _vertex_block(lines[pos : pos + nv], nv, source)
    if verts.shape != (nv, 3):
        raise CorpusError(source, "vertex lines with fewer than 3 coordinates")
    if not np.isfinite(verts).all():
        raise CorpusError(source, f"{int((~np.isfinite(verts)).any(axis=1).sum())} vertices with NaN/inf coordinates")
    faces = _face_block(lines[pos + nv : pos + nv + nf], source)
    if faces.min() < 0 or faces.max() >= nv:
        raise CorpusError(source, f"face indices in [{faces.min()}, {faces.max()}], expected [0, {nv - 1}]")
    return verts, faces


def _vertex_block(lines: list[str], nv: int, source) -> np.ndarray:
    """[nv, 3] float64 from vertex lines; extra columns (normals, colours) are dropped."""
    tokens = " ".join(lines).split()
    try:
        if len(tokens) == 3 * nv:  # the common case, parsed in one numpy call
            return np.asarray(tokens, dtype=np.float64).reshape(nv, 3)
        rows = [ln.split() for ln in lines]
        if any(len(r) < 3 for r in rows):
            raise CorpusError(source, "vertex lines with fewer than 3 coordinates")
        return np.asarray([r[:3] for r in rows], dtype=np.float64)
    except ValueError as exc:
        raise CorpusError(source, f"bad vertex line: {exc}") from exc


def _face_block(lines: list[str], source) -> np.ndarray:
    """[F, 3] int64 triangles from face lines: polygons fan-triangulated, trailing colours dropped."""
    tokens = " ".join(lines).split()
    if len(tokens) == 4 * len(lines):  # all "3 a b c": one numpy call
        try:
            arr = np.asarray(tokens, dtype=np.int64).reshape(-1, 4)
        except ValueError:
            arr = None
        if arr is not None and (arr[:, 0] == 3).all():
            return arr[:, 1:].copy()
    tris: list[tuple[int, int, int]] = []
    for i, line in enumerate(lines):
        tok = line.split()
        try:
            k = int(tok[0])
            idx = [int(x) for x in tok[1 : 1 + k]]
        except (ValueError, IndexError) as exc:
            raise CorpusError(source, f"bad face line {i}: {line[:60]!r}") from exc
        if len(idx) != k or k < 3:
            raise CorpusError(source, f"face {i} has {len(idx)} of {k} indices, expected >= 3")
        tris.extend((idx[0], idx[j], idx[j + 1]) for j in range(1, k - 1))  # fan triangulation
    return np.asarray(tris, dtype=np.int64)


def write_off(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Write an ASCII OFF (header on its own line), 6 decimals: byte-deterministic."""
    lines = ["OFF", f"{len(vertices)} {len(faces)} 0"]
    lines += [f"{v[0]:.6f} {v[1]:.6f} {v[2]:.6f}" for v in np.asarray(vertices, dtype=np.float64)]
    lines += [f"3 {f[0]} {f[1]} {f[2]}" for f in np.asarray(faces, dtype=np.int64)]
    path.write_text("\n".join(lines) + "\n", encoding="ascii")


def load_off(path: Path):
    """Read an OFF file as a trimesh.Trimesh (unprocessed: vertex order kept)."""
    import trimesh

    require_file(path)
    verts, faces = parse_off(path.read_bytes(), path)
    return check_mesh(path, trimesh.Trimesh(vertices=verts, faces=faces, process=False))


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
