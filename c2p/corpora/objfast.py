"""Fast Wavefront OBJ reader that returns exactly what ``trimesh.load(path, file_type="obj",
resolver=..., process=False)`` returns, for the common case.

Why: mesh loading was ~35-39% of render-job worker time, and most of that is trimesh's
``trimesh.exchange.obj.load_obj`` walking the text line by line in Python (``re.split`` of
the face block, a per-line ``str.split`` to check that every face has the same column count,
per-line list comprehensions over the vertex block). On one CPU thread (trimesh 5.2.0, median
of 10 loads, subdivided synthetic ShapeNet-layout shapes), a 10,752-face / 5,376-vertex textured
OBJ takes 14.5 ms through trimesh and 5.9 ms here (x2.4); a 25k-face one 35.5 ms vs 14 ms.
What is left: ~40% is np.fromstring itself (kept on purpose: trimesh's own number parser, so
the floats are bit-identical by construction), about a third trimesh's own ``unmerge_faces``,
``Trimesh``/``TextureVisuals`` construction and MTL/texture opening, reused unchanged.

How: the text is normalised exactly like ``load_obj`` does, then every line is classified with
numpy on the raw bytes (line starts from the newline positions, the first bytes of each line),
and the v/vt/vn/f blocks are handed to ``np.fromstring`` as whole byte strings: the same
parser trimesh uses, on the same tokens, so the arrays are bit-for-bit the same. Everything
after parsing (MTL via ``parse_mtl``, ``unmerge_faces``, geometry names, ``_load_kwargs``,
the ``LoadSource`` bookkeeping and ``trimesh.load``'s "one geometry -> Trimesh" rule) is
trimesh's own code, called the way trimesh calls it, or copied from ``load_obj`` line for line.

What the fast path covers (anything else returns None, and the caller uses trimesh):

* lines that are blank, ``#`` comments, ``v``/``vt``/``vn``/``f``/``usemtl``/``mtllib``/
  ``o``/``g``/``s`` (keyword, one space, arguments; no leading whitespace);
* ``v`` and ``vn`` rows of exactly 3 numbers, ``vt`` rows of 2 or 3, written with digits,
  ``.``, ``+``, ``-``, ``e``/``E`` and spaces only (no vertex colours, no nan/inf, no tabs);
* ``f`` rows of non-negative indices (digits, ``/``, spaces) with the same count of numbers
  on every row of the file: trimesh's vectorised face path. Its reading of the layout (``v``,
  ``v/vt``, ``v//vn``, ``v/vt/vn``; triangles, or quads/polygons of one size) is trimesh's own
  ``_parse_faces_vectorized`` on each group's first row; vertex indices must be in range;
* ``usemtl`` groups (grouped by material like trimesh, in trimesh's order and naming) and an
  optional leading ``o`` name; ``usemtl `` may not appear anywhere else in the text.

Mixed triangles/quads (trimesh's per-line fallback), negative (relative) indices, vertex
colours, point clouds, lines, curves, tabs, indented lines etc. fall back.
The fast path is enabled only for the trimesh version it was checked against
(``VERIFIED_TRIMESH``): it replicates private trimesh internals, so a trimesh upgrade turns it
off (every file then goes through trimesh: slower, never different) until the new version has
been checked against trimesh's own loader and added there.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import trimesh

log = logging.getLogger(__name__)

# trimesh versions whose exchange/obj.py + exchange/load.py this module reproduces exactly.
VERIFIED_TRIMESH = frozenset({"5.2.0"})

# Line kinds. _USEMTL.._S must stay last: "kind >= _USEMTL" picks the keyword lines.
_OTHER, _BLANK, _COMMENT, _V, _VT, _VN, _F, _USEMTL, _MTLLIB, _O, _G, _S = range(12)

_SPACE, _NL = ord(" "), ord("\n")

# Bytes allowed in v/vt/vn rows (keyword cut): plain decimal / exponent notation only, so
# nothing np.fromstring might read differently from str.split (nan, inf, tabs, \r, ...).
_NUM_OK = b"0123456789.+-eE \n"
# Bytes allowed in face rows (keyword cut): no negative (relative) indices; "0" goes through
# trimesh's own "> 0" rule like any index.
_FACE_OK = b"0123456789/ \n"


def load_obj_fast(path: Path, resolver: Any) -> trimesh.Trimesh | trimesh.Scene | None:
    """``trimesh.load(str(path), file_type="obj", resolver=resolver, process=False)``, fast.

    Returns None when the file uses anything outside the fast path (see the module
    docstring): the caller then loads it with trimesh. Exceptions (unreadable file, ...) are
    the caller's to handle, by falling back to trimesh as well.
    """
    import trimesh
    from trimesh.exchange.load import _load_kwargs, _parse_file_args

    if trimesh.__version__ not in VERIFIED_TRIMESH:
        return None
    # Same steps as trimesh.exchange.load.load_scene for a file path: the LoadSource (file
    # path, type, resolver) ends up on the returned objects, so build it the same way.
    arg = _parse_file_args(file_obj=str(path), file_type="obj", resolver=resolver, allow_remote=False, session=None)
    try:
        # load_scene passes file_type and the caller's kwargs (process=False) on to load_obj,
        # which copies its **kwargs into every geometry's Trimesh kwargs.
        loaded_kwargs = _load_obj_kwargs(arg.file_obj, arg.resolver, {"file_type": "obj", "process": False})
    finally:
        if arg.was_opened:
            arg.file_obj.close()
    if loaded_kwargs is None:
        return None
    parsed: dict[str, Any] = {"process": False}
    parsed.update(loaded_kwargs)
    loaded = _load_kwargs(**parsed)
    # load_scene: wrap a non-Scene, then stamp the source on the scene and every geometry.
    if not isinstance(loaded, trimesh.Scene):  # never for OBJ kwargs; kept to mirror trimesh
        loaded._source = arg
        loaded = trimesh.Scene(loaded)
    loaded._source = arg
    for g in loaded.geometry.values():
        g._source = arg
    # trimesh.load's backwards-compatible rule: an OBJ with one geometry comes back as it.
    if len(loaded.geometry) == 1:
        geom = next(iter(loaded.geometry.values()))
        geom.metadata.update(loaded.metadata)
        return geom
    return loaded


def _load_obj_kwargs(file_obj: Any, resolver: Any, kwargs: dict[str, Any]) -> dict | None:
    """``trimesh.exchange.obj.load_obj(file_obj, resolver, **kwargs)`` with default options
    (group_material=True, no object/group split, maintain_order=False), or None."""
    from trimesh import util
    from trimesh.exchange.obj import _parse_faces_vectorized, parse_mtl
    from trimesh.visual.material import SimpleMaterial
    from trimesh.visual.texture import TextureVisuals, unmerge_faces

    # Text normalisation as load_obj; each replace only runs when its first character occurs
    # (same result: a one-character test is a memchr, ~50x cheaper than a two-character
    # search or a replace on a 0.6 MB text).
    text = util.decode_text(file_obj.read())
    text = text.strip()
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    text = "\n" + text + "\n"
    if "\\" in text:
        text = text.replace("\\\n", "")

    # Parse before the MTL: a file outside the fast path then costs no image/MTL reads here.
    scan = _scan(text)
    if scan is None:
        return None
    v, vt, vn, groups, current_object, sample_lines, columns = scan

    # Load materials: verbatim from load_obj (skip_materials=False).
    materials: dict = {}
    mtl_position = text.find("mtllib")
    if mtl_position >= 0:
        mtl_path = text[mtl_position + 6 : text.find("\n", mtl_position)].strip()
        try:
            material_kwargs = parse_mtl(resolver[mtl_path], resolver=resolver)
            materials = {k: SimpleMaterial(**m) for k, m in material_kwargs.items()}
        except (OSError, TypeError):
            log.debug(f"unable to load materials from: {mtl_path}")
        except Exception:
            log.debug(f"unable to load materials from: {mtl_path}", exc_info=True)

    vc = None  # vertex colours are outside the fast path
    maintain_order = False
    group_material = True
    geometry: dict[str, dict] = {}
    # load_obj pops its (material, chunk) list from the end: geometries come in reverse order.
    for (material, array), sample_line in zip(reversed(groups), reversed(sample_lines)):
        faces, faces_tex, faces_norm = _parse_faces_vectorized(array=array, columns=columns, sample_line=sample_line)
        if faces.max() >= len(v):
            return None  # trimesh raises IndexError here: let it, with its own message

        # From here on: the body of load_obj's loop, verbatim (minus tol.strict asserts and
        # the split_objects/split_groups name parts, both off).
        name_parts = []
        if group_material and len(materials) > 1 and material is not None:
            name_parts.append(str(material))
        if name_parts:
            name = "_".join(name_parts)
        elif current_object is not None:
            name = current_object
        else:
            name = next(
                i
                for i in (getattr(resolver, "file_name", None), getattr(file_obj, "name", None), "geometry")
                if i is not None
            )
        name = util.unique_name(name, geometry)

        mesh = kwargs.copy()
        if faces_tex is not None:
            if faces_norm is not None and len(faces_norm) == len(faces):
                new_faces, mask_v, mask_vt, mask_vn = unmerge_faces(
                    faces, faces_tex, faces_norm, maintain_faces=maintain_order
                )
            else:
                mask_vn = None
                new_faces, mask_v, mask_vt = unmerge_faces(faces, faces_tex, maintain_faces=maintain_order)
            try:
                uv = vt[mask_vt]
            except Exception:
                log.debug("index failed on UV coordinates, skipping!")
                uv = None
            mesh.update({"vertices": v[mask_v].copy(), "faces": new_faces})
        else:
            uv = None
            if vn is not None and np.shape(faces_norm) == faces.shape:
                new_faces, mask_v, mask_vn = unmerge_faces(faces, faces_norm, maintain_faces=maintain_order)
            else:
                if maintain_order:
                    mask_v = np.ones(len(v), dtype=bool)
                else:
                    mask_v = np.zeros(len(v), dtype=bool)
                mask_v[faces] = True
                inverse = np.zeros(len(v), dtype=np.int64)
                inverse[mask_v] = np.arange(mask_v.sum())
                new_faces = inverse[faces]
                mask_vn = None
            mesh.update({"faces": new_faces, "vertices": v[mask_v].copy()})

        if vc is not None:
            try:
                mesh["vertex_colors"] = vc[mask_v]
            except Exception:
                log.debug("failed to load vertex_colors", exc_info=True)
        if mask_vn is not None:
            try:
                normals = vn[mask_vn]
                if normals.shape != mesh["vertices"].shape:
                    raise ValueError(f"incorrect normals {normals.shape} != {mesh['vertices'].shape}")
                mesh["vertex_normals"] = normals
            except Exception:
                log.debug("failed to load vertex_normals", exc_info=True)

        visual = None
        if material in materials:
            visual = TextureVisuals(uv=uv, material=materials[material])
        elif uv is not None and len(uv) == len(mesh["vertices"]):
            visual = TextureVisuals(uv=uv)
        elif material is not None:
            log.debug(f"specified material ({material})  not loaded!")
        mesh["visual"] = visual
        geometry[name] = mesh

    graph = [{"geometry": k, "frame_to": k} for k in geometry.keys()]
    return {"geometry": geometry, "graph": graph}


def _block(
    data: bytes, nl: np.ndarray, lines: np.ndarray, keyword: bytes, allowed: bytes, blank: bytes = b""
) -> bytes | None:
    """The rows ``lines`` (sorted line indices, each "<keyword> <args>") as one byte string
    "\\n<row>\\n<row>...", with the keyword letters (and any byte in ``blank``) turned into
    spaces; None if the rows hold any byte outside ``allowed`` besides their keyword.
    Consecutive rows are sliced out as one piece, so the Python loop runs per block of rows
    (a handful in practice), not per row."""
    breaks = np.flatnonzero(np.diff(lines) != 1)
    firsts = lines[np.concatenate(([0], breaks + 1))].tolist()
    lasts = lines[np.concatenate((breaks, [len(lines) - 1]))].tolist()
    bounds = nl.tolist() if len(firsts) > 64 else nl  # many blocks: avoid numpy scalar indexing
    # Line i spans nl[i] + 1 .. nl[i + 1]; each piece starts at its first row's leading "\n".
    raw = b"".join([data[bounds[f] : bounds[e + 1]] for f, e in zip(firsts, lasts)])
    # Every row starts with the keyword, so if nothing but len(keyword) letters per row is
    # outside ``allowed``, those letters are exactly the keywords: blank them all in one pass.
    if len(raw.translate(None, allowed)) != len(keyword) * len(lines):
        return None
    return raw.translate(bytes.maketrans(keyword + blank, b" " * (len(keyword) + len(blank))))


def _floats(raw: bytes | None, rows: int, first_row: str) -> np.ndarray | None:
    """One vertex kind's rows as an (rows, per_row) float64 array, or None.

    Same as trimesh's ``_parse_vertices``: the rows' text with its "+e" -> "e" and "-e" -> "e"
    rewrite, through np.fromstring; per_row from the first row's whitespace-split tokens.
    """
    if raw is None:
        return None  # nan, inf, tabs, \\r, letters, ...: not covered
    if b"e" in raw:  # one memchr; ShapeNet-style fixed-point files skip both replaces
        raw = raw.replace(b"+e", b"e").replace(b"-e", b"e")
    array = np.fromstring(raw, sep=" ", dtype=np.float64)
    per_row = len(first_row.split())
    if per_row == 0 or len(array) != rows * per_row:
        return None  # trimesh's ragged-rows slow path: not covered
    return array.reshape((rows, per_row))


def _scan(text: str) -> tuple | None:
    """Vectorised equivalent of load_obj's _parse_vertices + _preprocess_faces + _group_by and
    the per-group face number parsing, for the fast-path subset. Returns
    (v, vt, vn, [(material, flat int array), ...], object name, [sample line per group],
    columns) with groups in _group_by's order (first face of each material), or None."""
    data = text.encode("utf-8")
    size = len(data)
    # Pad so that reading the first 3 bytes of any line never runs off the end.
    buf = np.frombuffer(data + b"\0\0\0", dtype=np.uint8)
    nl = np.flatnonzero(buf[:size] == _NL)
    # The normalised text starts and ends with "\n": lines are the spans between newlines.
    if len(nl) < 2 or nl[0] != 0 or nl[-1] != size - 1:
        return None
    starts = nl[:-1] + 1
    lens = nl[1:] - starts
    b0, b1, b2 = buf[starts], buf[starts + 1], buf[starts + 2]
    sp1, sp2 = b1 == _SPACE, b2 == _SPACE

    kind = np.full(len(starts), _OTHER, dtype=np.uint8)
    kind[b0 == ord("#")] = _COMMENT
    is_v = b0 == ord("v")
    kind[is_v & sp1] = _V
    kind[is_v & (b1 == ord("t")) & sp2] = _VT
    kind[is_v & (b1 == ord("n")) & sp2] = _VN
    kind[(b0 == ord("f")) & sp1] = _F
    kind[(b0 == ord("o")) & sp1] = _O
    kind[(b0 == ord("g")) & sp1] = _G
    kind[(b0 == ord("s")) & sp1] = _S
    # usemtl / mtllib lines are few: check their full keyword in Python.
    for i in np.flatnonzero((b0 == ord("u")) | (b0 == ord("m"))).tolist():
        head = data[starts[i] : starts[i] + 7]
        if head == b"usemtl ":
            kind[i] = _USEMTL
        elif head == b"mtllib ":
            kind[i] = _MTLLIB
    kind[lens == 0] = _BLANK
    if (kind == _OTHER).any():
        return None  # l, vp, curves, indented lines, "g" without a name, ...: not covered
    usemtl_lines = np.flatnonzero(kind == _USEMTL)
    # trimesh splits face chunks at every "usemtl " substring, not only at line starts. v/vt/
    # vn/f rows cannot hold one (their bytes are checked below): look at the other lines only.
    for i in np.flatnonzero(kind >= _USEMTL).tolist() + np.flatnonzero(kind == _COMMENT).tolist():
        if data.count(b"usemtl ", starts[i], nl[i + 1]) != (kind[i] == _USEMTL):
            return None
    f_lines = np.flatnonzero(kind == _F)
    v_lines = np.flatnonzero(kind == _V)
    if len(f_lines) == 0 or len(v_lines) == 0:
        return None  # point cloud / no geometry: trimesh's other branches

    def line(i: int) -> str:
        return data[starts[i] : nl[i + 1]].decode("utf-8")

    v = _floats(_block(data, nl, v_lines, b"v", _NUM_OK), len(v_lines), line(v_lines[0])[2:])
    if v is None or v.shape[1] != 3:
        return None  # vertex colours / homogeneous w: not covered
    vt = vn = None
    vt_lines = np.flatnonzero(kind == _VT)
    if len(vt_lines):
        vt = _floats(_block(data, nl, vt_lines, b"vt", _NUM_OK), len(vt_lines), line(vt_lines[0])[3:])
        if vt is None or vt.shape[1] not in (2, 3):
            return None
        vt = vt[:, :2]  # UVW -> UV, as trimesh
    vn_lines = np.flatnonzero(kind == _VN)
    if len(vn_lines):
        vn = _floats(_block(data, nl, vn_lines, b"vn", _NUM_OK), len(vn_lines), line(vn_lines[0])[3:])
        if vn is None or vn.shape[1] != 3:
            return None

    # Faces. trimesh's vectorised path reads each group's rows as one stream of integers
    # ("/" read as a separator) and needs the same count per row; its interpretation (v, v/vt,
    # v//vn, v/vt/vn, triangles or quads) comes from the group's first row, which we hand to
    # its own _parse_faces_vectorized. Here: positive indices only, same count on every row.
    # "/" is read as a separator, as trimesh's replace("/", " ").
    raw = _block(data, nl, f_lines, b"f", _FACE_OK, blank=b"/")
    if raw is None:
        return None  # negative indices, tabs, anything else: not covered
    chars = np.frombuffer(raw, dtype=np.uint8)
    is_digit = (chars - 48) < 10  # uint8 wraps below "0"
    # Integers = digit runs; raw starts with "\n", so no run starts at 0.
    run_start = np.empty(len(chars), dtype=np.int8)
    run_start[0] = 0
    np.logical_and(is_digit[1:], ~is_digit[:-1], out=run_start[1:].view(bool))
    per_row = np.add.reduceat(run_start, np.flatnonzero(chars == _NL), dtype=np.int64)
    columns = int(per_row[0])
    if columns == 0 or not (per_row == columns).all():
        return None  # mixed triangles/quads etc.: trimesh's per-line fallback, not covered
    ints = np.fromstring(raw, sep=" ", dtype=np.int64)
    if len(ints) != columns * len(f_lines):
        return None
    ints[ints > 0] -= 1  # OBJ is 1-based; as trimesh
    rows = ints.reshape(len(f_lines), columns)

    # Object name: _preprocess_faces only reads an "o" line when it is the first of the
    # usemtl/o/f/g/s lines (the start of its first chunk); it then names every chunk.
    starter = np.flatnonzero((kind == _USEMTL) | (kind == _O) | (kind == _F) | (kind == _G) | (kind == _S))[0]
    current_object = line(starter)[2:].strip() if kind[starter] == _O else None

    # Material of each face row: the last usemtl line before it (None before any).
    groups = []
    sample_lines = []
    if len(usemtl_lines) == 0:
        groups.append((None, rows.reshape(-1)))
        sample_lines.append(line(f_lines[0])[1:].strip())
    else:
        names: dict[str, int] = {}
        usemtl_ids = np.array([names.setdefault(line(i)[6:].strip(), len(names)) for i in usemtl_lines.tolist()])
        by_id = list(names)
        which = np.searchsorted(usemtl_lines, f_lines) - 1
        face_mat = np.where(which >= 0, usemtl_ids[np.maximum(which, 0)], -1)
        # _group_by keys a dict by material in order of first appearance of a face chunk.
        uniq, first = np.unique(face_mat, return_index=True)
        for g, f0 in sorted(zip(uniq.tolist(), first.tolist()), key=lambda t: t[1]):
            groups.append((None if g < 0 else by_id[g], rows[face_mat == g].reshape(-1)))
            # load_obj's sample line: the group's first face row after "f", stripped.
            sample_lines.append(line(f_lines[f0])[1:].strip())
    return v, vt, vn, groups, current_object, sample_lines, columns
