"""Mesh files → trimesh objects, for every corpus reader: OBJ (fast reader, else trimesh), OFF, GLB/glTF, STL, PLY.

Readers call these instead of each other: :func:`load_mesh_file` (anything trimesh reads, with a
resolver that keeps texture paths inside the object's folder, and the vectorised OBJ reader
:mod:`c2p.corpora.objfast` in front for OBJ), :func:`load_off` (ModelNet's OFF, including the real files'
headers with the counts on the ``OFF`` line itself, and Geomview's COFF/NOFF/STOFF/4OFF/nOFF variants), :func:`load_ply` (mesh or point cloud), and
:func:`check_mesh`, which every loaded mesh passes. Every failure is a :class:`CorpusError` naming
the file and what is wrong with it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
from trimesh.resolvers import FilePathResolver

from c2p.corpora.base import CorpusError, check_points, require_file

__all__ = ["BoundedResolver", "check_mesh", "load_mesh_file", "load_off", "load_ply", "parse_off", "write_off"]

log = logging.getLogger(__name__)


def check_mesh(source: str | Path, mesh: Any) -> Any:
    """Validate a loaded trimesh Trimesh/Scene: has triangles, finite vertices. Returns it."""
    import trimesh

    if isinstance(mesh, trimesh.Scene):
        geoms = [g for g in mesh.geometry.values() if isinstance(g, trimesh.Trimesh)]
    elif isinstance(mesh, trimesh.Trimesh):
        geoms = [mesh]
    else:
        raise CorpusError(source, f"loaded a {type(mesh).__name__} without triangles, expected a triangle mesh")
    faces = sum(len(g.faces) for g in geoms)
    if faces == 0:
        raise CorpusError(source, "mesh has no triangles")
    for g in geoms:
        if not np.isfinite(np.asarray(g.vertices)).all():
            raise CorpusError(source, "mesh has NaN/inf vertex coordinates")
    return mesh


class BoundedResolver(FilePathResolver):
    """trimesh file resolver that allows ``..`` in asset paths, but only inside ``bound``.

    trimesh >= 5 refuses "../images/texture0.jpg"; ShapeNet's MTLs need it. A module-level
    class (not a closure) because trimesh keeps the resolver on the loaded mesh, and records
    travel between Ray workers by pickle.
    """

    def __init__(self, source: str, bound: str | Path):
        super().__init__(source, allow_anywhere=True)
        self.bound = Path(bound).resolve()

    def absolute(self, name: str) -> Path:
        p = Path(super().absolute(name))
        if not p.is_relative_to(self.bound):
            raise ValueError(f"asset {name!r} escapes the object folder {self.bound}")
        return p


def load_mesh_file(path: Path, bound: Path, file_type: str | None = None):
    """Load a mesh file with trimesh keeping visuals; assets may live anywhere under ``bound``.

    Returns trimesh.Trimesh or trimesh.Scene; raises CorpusError if unusable.
    """
    import trimesh

    require_file(path)
    if (file_type or path.suffix.lstrip(".")).lower() == "obj":
        # Vectorised OBJ reader, identical output to the trimesh call below (c2p.corpora.objfast);
        # None (file outside its fast path) or any error -> trimesh decides, errors included.
        from c2p.corpora.objfast import load_obj_fast

        try:
            mesh = load_obj_fast(path, BoundedResolver(str(path), bound))
        except Exception as exc:
            log.debug("%s: fast OBJ reader failed (%s: %s), using trimesh", path, type(exc).__name__, exc)
            mesh = None
        if mesh is not None:
            return check_mesh(path, mesh)
    try:
        mesh = trimesh.load(str(path), file_type=file_type, resolver=BoundedResolver(str(path), bound), process=False)
    except Exception as exc:
        raise CorpusError(path, f"unreadable mesh ({type(exc).__name__}: {exc})") from exc
    return check_mesh(path, mesh)


# Geomview's OFF keyword: [ST][C][N][4][n]OFF. ST, C and N add texture, colour and normal
# columns after the coordinates; 4 adds a homogeneous w; n puts the dimension on its own before the counts.
_OFF_KEYWORD = re.compile(r"(ST)?(C)?(N)?(4)?(n)?OFF")


def parse_off(data: bytes | str, source: str | Path = "<off>") -> tuple[np.ndarray, np.ndarray]:
    """Parse an ASCII OFF file. Returns (vertices [V,3] float64, faces [F,3] int64 triangles).

    Reads the Geomview variants: ``COFF``/``NOFF``/``CNOFF``/``STOFF``/``STCNOFF`` (colour,
    normal and texture columns after x y z are ignored), ``4OFF`` (x y z w, divided by w) and
    ``nOFF``/``4nOFF`` with dimension 3; face lines may carry a colour after their indices.
    The counts may stand on the keyword's line (ModelNet's ``OFF490 518 0``).
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
    keyword = _OFF_KEYWORD.match(head)
    if keyword is None:
        raise CorpusError(source, f"header {head[:40]!r}, expected a line starting with 'OFF' "
                                  "(or a variant: COFF, NOFF, CNOFF, STOFF, 4OFF, nOFF)")
    homogeneous, with_dim = bool(keyword.group(4)), bool(keyword.group(5))
    tokens, pos = head[keyword.end():].split(), 1  # counts on the keyword's line itself: "OFF490 518 0"
    if tokens[:1] == ["BINARY"]:
        raise CorpusError(source, f"header {head[:40]!r}: binary OFF, expected an ASCII OFF file")
    need = 3 if with_dim else 2  # [Ndim] V F (E is optional and never used)
    while len(tokens) < need and pos < len(lines):
        tokens += lines[pos].split()
        pos += 1
    if not tokens:
        raise CorpusError(source, "no vertex/face counts after the OFF header")
    if with_dim:
        if tokens[0] != "3":
            raise CorpusError(source, f"{keyword.group(0)} dimension {tokens[0]!r}, expected 3")
        tokens = tokens[1:]
    try:
        nv, nf = int(tokens[0]), int(tokens[1])
    except (ValueError, IndexError) as exc:
        raise CorpusError(source, f"counts {' '.join(tokens)!r}, expected 'V F E' integers") from exc
    if nv <= 0 or nf <= 0:
        raise CorpusError(source, f"{nv} vertices and {nf} faces, expected both > 0")
    if len(lines) < pos + nv + nf:
        raise CorpusError(source, f"truncated: header says {nv} vertices + {nf} faces, file has {len(lines) - pos} data lines")
    verts = _vertex_block(lines[pos : pos + nv], nv, source, columns=4 if homogeneous else 3)
    if homogeneous:
        if (verts[:, 3] == 0).any():
            raise CorpusError(source, f"{int((verts[:, 3] == 0).sum())} vertices with w = 0 in a 4OFF file, expected w != 0")
        verts = verts[:, :3] / verts[:, 3:]
    if not np.isfinite(verts).all():
        raise CorpusError(source, f"{int((~np.isfinite(verts)).any(axis=1).sum())} vertices with NaN/inf coordinates")
    faces = _face_block(lines[pos + nv : pos + nv + nf], source)
    if faces.min() < 0 or faces.max() >= nv:
        raise CorpusError(source, f"face indices in [{faces.min()}, {faces.max()}], expected [0, {nv - 1}]")
    return verts, faces


def _vertex_block(lines: list[str], nv: int, source, *, columns: int = 3) -> np.ndarray:
    """[nv, columns] float64 from vertex lines; the columns after them (normals, colours, texture) are dropped."""
    tokens = " ".join(lines).split()
    try:
        if len(tokens) == columns * nv:  # the common case, parsed in one numpy call
            return np.asarray(tokens, dtype=np.float64).reshape(nv, columns)
        rows = [ln.split() for ln in lines]
        if any(len(r) < columns for r in rows):
            raise CorpusError(source, f"vertex lines with fewer than {columns} coordinates")
        return np.asarray([r[:columns] for r in rows], dtype=np.float64)
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


def load_ply(path: Path) -> tuple[Any, np.ndarray | None]:
    """A .ply file as ``(trimesh.Trimesh, None)`` when it has faces, else ``(None, points [N,3] float32)``."""
    import trimesh

    require_file(path)
    try:
        geom = trimesh.load(str(path), process=False)
    except Exception as exc:
        raise CorpusError(path, f"unreadable .ply ({type(exc).__name__}: {exc})") from exc
    if isinstance(geom, trimesh.PointCloud):
        return None, check_points(path, geom.vertices)
    return check_mesh(path, geom), None
