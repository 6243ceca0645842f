"""Procedural synthetic corpus, written in the real ShapeNetCore v2 or ModelNet layout.

``python -m c2p.corpora.synthetic --out DIR --layout shapenet|modelnet --per-class K --seed S [--test-per-class K]``

Fourteen classes (:data:`SYNTHETIC_CLASSES`): seven primitives (box, sphere, cylinder, cone,
torus, capsule, pyramid) and seven composites built from them (table, chair, lamp, mug,
bookshelf, bed, airplane). Every instance varies its proportions (ranges chosen so that
neighbouring classes overlap: a short capsule is nearly a sphere, a pyramid a four-sided
cone, a shelf seen from the back a box), gets a small smooth deformation, a random rotation
about the up axis only, a colour and a 64×64 texture image (wood grain, brushed metal,
plastic or fabric checks) mapped through cylindrical UVs, and a caption ("a red wooden chair").

Layouts (both read by the ordinary readers, and by ``open_corpus("synthetic", DIR)``):

- ``shapenet``: ShapeNetCore v2, world y-up: ``taxonomy.json``, ``all.csv``
  (id,synsetId,subSynsetId,modelId,split), ``<synsetId>/<modelId>/models/model_normalized.{obj,mtl}``
  with ``map_Kd ../images/texture0.png``; meshes centred with bounding-box diagonal 1.
- ``modelnet``: ModelNet40, world z-up: ``<class>/train/<class>_0001.off``, test numbering
  continuing after train; arbitrary scale (×10–40) like the real files; no texture.

Both write ``captions.csv`` (uid,caption) and ``synthetic.json`` (generator settings).
Object ``i`` of a class depends only on (seed, class, i), so the same seed gives the same
files byte for byte, and more objects per class extend a corpus without changing the others.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import shutil
import sys
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from c2p.corpora.base import Corpus

__all__ = ["SYNTHETIC_CLASSES", "SYNSET_IDS", "write_synthetic", "make_object", "open_synthetic", "main"]

SYNTHETIC_CLASSES: list[str] = [
    "airplane", "bed", "bookshelf", "box", "capsule", "chair", "cone",
    "cylinder", "lamp", "mug", "pyramid", "sphere", "table", "torus",
]  # sorted: the readers' label_index is the position in this list

# Real WordNet synsets where ShapeNet has the class; 9xxxxxxx for the primitives.
SYNSET_IDS: dict[str, str] = {
    "airplane": "02691156", "bed": "02818832", "bookshelf": "02871439", "chair": "03001627",
    "lamp": "03636649", "mug": "03797390", "table": "04379243",
    "box": "90000001", "capsule": "90000002", "cone": "90000003", "cylinder": "90000004",
    "pyramid": "90000005", "sphere": "90000006", "torus": "90000007",
}

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 35), "green": (50, 150, 60), "blue": (40, 80, 190), "yellow": (225, 200, 40),
    "white": (235, 235, 230), "black": (35, 35, 38), "gray": (128, 128, 130), "brown": (120, 75, 40),
    "orange": (235, 130, 30), "purple": (120, 50, 150), "pink": (230, 130, 170),
}
MATERIALS = ("wooden", "metal", "plastic", "fabric")
TEXTURE_SIZE = 64
MANIFEST = "synthetic.json"


# ----------------------------------------------------------------------------- shapes
# Builders make z-up meshes (trimesh.creation's convention) standing on z = 0.


def _box(ext, centre):
    import trimesh

    m = trimesh.creation.box(extents=ext)
    m.apply_translation(centre)
    return m


def _cyl(radius, height, centre, sections=20):
    import trimesh

    m = trimesh.creation.cylinder(radius=radius, height=height, sections=sections)
    m.apply_translation(centre)
    return m


def _join(parts):
    import trimesh

    return trimesh.util.concatenate(parts)


def _refine(mesh, min_faces: int):
    # Primitives with few large faces cannot bend: subdivide so the deformation shows.
    while len(mesh.faces) < min_faces:
        mesh = mesh.subdivide()
    return mesh


def _u(rng, lo, hi) -> float:
    return float(rng.uniform(lo, hi))


def build_box(rng):
    return _refine(_box([_u(rng, 0.3, 1.0), _u(rng, 0.3, 1.0), _u(rng, 0.2, 1.0)], [0, 0, 0]), 300)


def build_sphere(rng):
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    m.apply_scale([1.0, _u(rng, 0.85, 1.15), _u(rng, 0.75, 1.2)])
    return m


def build_cylinder(rng):
    return _refine(_cyl(_u(rng, 0.2, 0.5), _u(rng, 0.3, 1.4), [0, 0, 0], sections=24), 300)


def build_cone(rng):
    import trimesh

    return _refine(trimesh.creation.cone(radius=_u(rng, 0.25, 0.6), height=_u(rng, 0.4, 1.3), sections=24), 300)


def build_pyramid(rng):
    import trimesh

    m = trimesh.creation.cone(radius=_u(rng, 0.3, 0.6), height=_u(rng, 0.4, 1.2), sections=4)
    m.apply_scale([1.0, _u(rng, 0.7, 1.0), 1.0])
    return _refine(m, 300)


def build_capsule(rng):
    import trimesh

    # height 0.05 is almost a sphere: the overlap with "sphere" is intended.
    return trimesh.creation.capsule(height=_u(rng, 0.05, 1.2), radius=_u(rng, 0.2, 0.4), count=[14, 14])


def build_torus(rng):
    import trimesh

    return trimesh.creation.torus(major_radius=_u(rng, 0.3, 0.5), minor_radius=_u(rng, 0.06, 0.2),
                                  major_sections=28, minor_sections=12)


def build_table(rng):
    w, d, h = _u(rng, 0.7, 1.5), _u(rng, 0.5, 1.0), _u(rng, 0.45, 0.8)
    t, leg = _u(rng, 0.03, 0.08), _u(rng, 0.03, 0.08)
    parts = []
    if rng.random() < 0.3:  # round table on one pedestal
        r = min(w, d) / 2
        parts += [_cyl(r, t, [0, 0, h - t / 2], 28), _cyl(leg, h - t, [0, 0, (h - t) / 2], 12),
                  _cyl(r * 0.5, 0.03, [0, 0, 0.015], 20)]
    else:
        parts.append(_box([w, d, t], [0, 0, h - t / 2]))
        inset = _u(rng, 0.0, 0.1)
        for sx in (-1, 1):
            for sy in (-1, 1):
                parts.append(_box([leg, leg, h - t], [sx * (w / 2 - leg / 2 - inset * w / 2),
                                                      sy * (d / 2 - leg / 2 - inset * d / 2), (h - t) / 2]))
    return _join(parts)


def build_chair(rng):
    w, d, h = _u(rng, 0.4, 0.6), _u(rng, 0.4, 0.6), _u(rng, 0.38, 0.5)
    t, leg, back = _u(rng, 0.03, 0.07), _u(rng, 0.025, 0.05), _u(rng, 0.25, 0.7)
    parts = [_box([w, d, t], [0, 0, h - t / 2])]
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(_box([leg, leg, h - t], [sx * (w / 2 - leg / 2), sy * (d / 2 - leg / 2), (h - t) / 2]))
    parts.append(_box([w, t, back], [0, d / 2 - t / 2, h + back / 2]))
    if rng.random() < 0.4:  # armrests
        for sx in (-1, 1):
            parts.append(_box([leg, d, leg], [sx * (w / 2 - leg / 2), 0, h + 0.2]))
    return _join(parts)


def build_lamp(rng):
    import trimesh

    base_r, pole_h = _u(rng, 0.12, 0.25), _u(rng, 0.5, 1.1)
    shade_r, shade_h = _u(rng, 0.12, 0.3), _u(rng, 0.12, 0.3)
    parts = [_cyl(base_r, 0.04, [0, 0, 0.02], 20), _cyl(_u(rng, 0.012, 0.03), pole_h, [0, 0, pole_h / 2], 10)]
    if rng.random() < 0.5:
        shade = trimesh.creation.cone(radius=shade_r, height=shade_h, sections=20)
        shade.apply_translation([0, 0, pole_h - shade_h * 0.4])
    else:
        shade = _cyl(shade_r, shade_h, [0, 0, pole_h], 20)
    parts.append(shade)
    return _join(parts)


def build_mug(rng):
    import trimesh

    r, h = _u(rng, 0.22, 0.4), _u(rng, 0.45, 0.9)
    wall = _u(rng, 0.02, 0.05)
    body = trimesh.creation.annulus(r_min=r - wall, r_max=r, height=h, sections=24)
    body.apply_translation([0, 0, h / 2])
    bottom = _cyl(r - wall, wall, [0, 0, wall / 2], 24)
    hr = _u(rng, 0.1, 0.2) * h / 0.6
    handle = trimesh.creation.torus(major_radius=hr, minor_radius=_u(rng, 0.02, 0.04),
                                    major_sections=20, minor_sections=8)
    handle.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    handle.apply_translation([r, 0, h / 2])
    return _join([body, bottom, handle])


def build_bookshelf(rng):
    w, h, d = _u(rng, 0.6, 1.2), _u(rng, 0.9, 2.0), _u(rng, 0.22, 0.4)
    t = _u(rng, 0.02, 0.05)
    shelves = int(rng.integers(2, 6))
    parts = [_box([t, d, h], [-(w - t) / 2, 0, h / 2]), _box([t, d, h], [(w - t) / 2, 0, h / 2]),
             _box([w, t, h], [0, (d - t) / 2, h / 2])]  # sides and back
    for k in range(shelves + 1):
        z = t / 2 + k * (h - t) / shelves
        parts.append(_box([w - 2 * t, d - t, t], [0, -t / 2, z]))
    return _join(parts)


def build_bed(rng):
    import trimesh

    w, length, base_h = _u(rng, 0.9, 1.6), _u(rng, 1.8, 2.2), _u(rng, 0.25, 0.45)
    matt = _u(rng, 0.1, 0.25)
    head = _u(rng, 0.4, 1.0)
    parts = [_box([w, length, base_h], [0, 0, base_h / 2]),
             _box([w * 0.96, length * 0.97, matt], [0, 0, base_h + matt / 2]),
             _box([w, 0.06, base_h + head], [0, length / 2, (base_h + head) / 2])]
    if rng.random() < 0.5:  # footboard
        parts.append(_box([w, 0.06, base_h + head * 0.4], [0, -length / 2, (base_h + head * 0.4) / 2]))
    pillows = 1 if w < 1.2 else 2
    for k in range(pillows):
        p = trimesh.creation.icosphere(subdivisions=1, radius=0.5)
        p.apply_scale([w / pillows * 0.8, 0.35, 0.12])
        p.apply_translation([(k - (pillows - 1) / 2) * w / pillows, length / 2 - 0.3, base_h + matt + 0.05])
        parts.append(p)
    return _join(parts)


def build_airplane(rng):
    import trimesh

    length, r = _u(rng, 1.5, 2.5), _u(rng, 0.08, 0.18)
    body = trimesh.creation.capsule(height=length - 2 * r, radius=r, count=[10, 10])
    body.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]))  # along x
    span, chord = _u(rng, 1.2, 2.4), _u(rng, 0.2, 0.45)
    wing = _box([chord, span, 0.03], [0, 0, 0])
    sweep = _u(rng, -0.15, 0.5)  # shear the wing tips backwards
    v = wing.vertices.copy()
    v[:, 0] -= sweep * np.abs(v[:, 1])
    wing.vertices = v
    wing.apply_translation([_u(rng, -0.1, 0.15) * length, 0, -r * 0.3])
    tail_x = -length / 2 + chord * 0.3
    stab = _box([chord * 0.5, span * _u(rng, 0.25, 0.4), 0.02], [tail_x, 0, 0])
    fin = _box([chord * 0.6, 0.02, _u(rng, 0.2, 0.4)], [tail_x, 0, r + 0.12])
    m = _join([body, wing, stab, fin])
    m.apply_translation([0, 0, r])
    return m


BUILDERS: dict[str, Callable] = {
    "airplane": build_airplane, "bed": build_bed, "bookshelf": build_bookshelf, "box": build_box,
    "capsule": build_capsule, "chair": build_chair, "cone": build_cone, "cylinder": build_cylinder,
    "lamp": build_lamp, "mug": build_mug, "pyramid": build_pyramid, "sphere": build_sphere,
    "table": build_table, "torus": build_torus,
}
assert sorted(BUILDERS) == SYNTHETIC_CLASSES


# ----------------------------------------------------------------------------- appearance


def make_texture(rng, colour: tuple[int, int, int], material: str, size: int = TEXTURE_SIZE) -> np.ndarray:
    """A small procedural texture: uint8 [size, size, 3] around ``colour``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    base = np.asarray(colour, dtype=np.float64)
    if material == "wooden":  # grain: wavy stripes along u
        f = rng.uniform(6, 14)
        shade = 0.8 + 0.2 * np.sin(2 * np.pi * (f * xx + 0.3 * np.sin(2 * np.pi * 3 * yy)))
    elif material == "metal":  # brushed: streaks along v
        shade = 0.9 + 0.1 * np.repeat(rng.random((1, size)), size, axis=0)
    elif material == "fabric":  # checks
        n = int(rng.integers(4, 10))
        shade = np.where(((xx * n).astype(int) + (yy * n).astype(int)) % 2 == 0, 1.0, 0.75)
    else:  # plastic: nearly flat
        shade = 0.95 + 0.05 * rng.random((size, size))
    img = base[None, None, :] * shade[..., None]
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _uv(vertices: np.ndarray) -> np.ndarray:
    """Cylindrical UVs about the z (up) axis of the construction frame: [V, 2] in [0, 1]."""
    u = np.arctan2(vertices[:, 1], vertices[:, 0]) / (2 * np.pi) + 0.5
    z = vertices[:, 2]
    v = (z - z.min()) / max(float(z.max() - z.min()), 1e-9)
    return np.stack([u, v], axis=1)


def _deform(rng, vertices: np.ndarray) -> np.ndarray:
    # Smooth sinusoidal displacement, at most ~2.5% of the object size per axis.
    size = float(np.linalg.norm(vertices.max(0) - vertices.min(0)))
    amp = rng.uniform(0.0, 0.025) * size
    freq = rng.uniform(1.0, 3.0, size=3) * 2 * np.pi / size
    phase = rng.uniform(0, 2 * np.pi, size=3)
    perm = rng.permutation(3)
    return vertices + amp * np.sin(vertices[:, perm] * freq + phase)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def make_object(cls: str, seed: int, index: int) -> dict:
    """Object ``index`` of class ``cls`` for ``seed``, z-up construction frame.

    Returns dict(vertices [V,3] float64, faces [F,3] int64, uv [V,2] float64,
    texture uint8 [64,64,3], colour (name, rgb), material, caption, model_id (32 hex)).
    """
    if cls not in BUILDERS:
        raise ValueError(f"class: {cls!r}, expected one of {SYNTHETIC_CLASSES}")
    rng = np.random.default_rng([seed, zlib.crc32(cls.encode()), index])
    mesh = _refine(BUILDERS[cls](rng), 400)  # composites too, so their deformation shows
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    vertices = _deform(rng, vertices)
    theta = rng.uniform(0, 2 * np.pi)  # rotation about the up axis only
    c, s = np.cos(theta), np.sin(theta)
    vertices = vertices @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])
    colour = str(rng.choice(sorted(COLOURS)))
    material = str(rng.choice(MATERIALS))
    texture = make_texture(rng, COLOURS[colour], material)
    caption = f"{_article(colour)} {colour} {material} {cls}"
    model_id = hashlib.sha1(f"c2p-synthetic/{seed}/{cls}/{index}".encode()).hexdigest()[:32]
    return dict(vertices=vertices, faces=faces, uv=_uv(vertices), texture=texture,
                colour=(colour, COLOURS[colour]), material=material, caption=caption, model_id=model_id)


# ----------------------------------------------------------------------------- writers


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _write_obj(model_dir: Path, obj: dict) -> None:
    """ShapeNetCore v2 files of one object (y-up, centred, bounding-box diagonal 1)."""
    v = obj["vertices"]
    v = np.stack([v[:, 0], v[:, 2], -v[:, 1]], axis=1)  # z-up → y-up: a rotation about x by -90°
    lo, hi = v.min(0), v.max(0)
    v = (v - (lo + hi) / 2) / float(np.linalg.norm(hi - lo))
    (model_dir / "models").mkdir(parents=True, exist_ok=True)
    (model_dir / "images").mkdir(parents=True, exist_ok=True)
    rgb = np.asarray(obj["colour"][1], dtype=np.float64) / 255.0
    (model_dir / "models" / "model_normalized.mtl").write_text(
        "# c2p synthetic\n"
        "newmtl material_0\n"
        "Ka 0.100000 0.100000 0.100000\n"
        f"Kd {rgb[0]:.6f} {rgb[1]:.6f} {rgb[2]:.6f}\n"
        "Ks 0.200000 0.200000 0.200000\n"
        "Ns 20.000000\n"
        "d 1.000000\n"
        "illum 2\n"
        "map_Kd ../images/texture0.png\n",
        encoding="ascii",
    )
    lines = ["# c2p synthetic", "mtllib model_normalized.mtl", "o model"]
    lines += [f"v {a:.6f} {b:.6f} {c:.6f}" for a, b, c in v]
    lines += [f"vt {a:.6f} {b:.6f}" for a, b in obj["uv"]]
    lines.append("usemtl material_0")
    lines += [f"f {a}/{a} {b}/{b} {c}/{c}" for a, b, c in obj["faces"] + 1]
    (model_dir / "models" / "model_normalized.obj").write_text("\n".join(lines) + "\n", encoding="ascii")
    (model_dir / "images" / "texture0.png").write_bytes(_png(obj["texture"]))


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")


def write_synthetic(
    out: str | Path,
    layout: str = "shapenet",
    per_class: int = 4,
    seed: int = 0,
    test_per_class: int = 0,
    classes: list[str] | None = None,
) -> Path:
    """Write the synthetic corpus to ``out`` in ``layout`` ("shapenet" or "modelnet").

    per_class / test_per_class: objects per class in the train / test split.
    classes: subset of :data:`SYNTHETIC_CLASSES` (default all). Returns ``out`` as a Path.
    An existing ``out`` is replaced only if it is empty or an earlier synthetic corpus.
    """
    from c2p.corpora.meshio import write_off

    if layout not in ("shapenet", "modelnet"):
        raise ValueError(f"layout: {layout!r}, expected 'shapenet' or 'modelnet'")
    if per_class < 0 or test_per_class < 0 or per_class + test_per_class == 0:
        raise ValueError(f"per_class={per_class}, test_per_class={test_per_class}: expected >= 0 and at least one object")
    classes = sorted(classes) if classes else list(SYNTHETIC_CLASSES)
    unknown = [c for c in classes if c not in BUILDERS]
    if unknown:
        raise ValueError(f"classes: {unknown}, expected names from {SYNTHETIC_CLASSES}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise FileExistsError(f"out: {out} is a non-empty folder that is not a synthetic corpus; expected an empty or new folder")
        shutil.rmtree(out)  # an earlier synthetic corpus: rewrite from scratch, no stale objects
    out.mkdir(parents=True, exist_ok=True)

    split_rows: list[list] = []
    caption_rows: list[list] = []
    for cls in classes:
        for i in range(per_class + test_per_class):
            split = "train" if i < per_class else "test"
            obj = make_object(cls, seed, i)
            if layout == "shapenet":
                synset = SYNSET_IDS[cls]
                _write_obj(out / synset / obj["model_id"], obj)
                split_rows.append([len(split_rows), synset, synset, obj["model_id"], split])
                caption_rows.append([f"{synset}-{obj['model_id']}", obj["caption"]])
            else:
                stem = f"{cls}_{i + 1:04d}"
                folder = out / cls / split
                folder.mkdir(parents=True, exist_ok=True)
                rng = np.random.default_rng([seed, zlib.crc32(cls.encode()), i, 1])
                # Real ModelNet files are not normalised: arbitrary scale and offset, z-up.
                v = obj["vertices"] * rng.uniform(10.0, 40.0) + rng.uniform(-1.0, 1.0, size=3)
                write_off(folder / f"{stem}.off", v, obj["faces"])
                caption_rows.append([stem, obj["caption"]])
    if layout == "shapenet":
        taxonomy = [{"synsetId": SYNSET_IDS[c], "name": c, "children": [], "numInstances": per_class + test_per_class}
                    for c in classes]
        (out / "taxonomy.json").write_text(json.dumps(taxonomy, indent=1) + "\n", encoding="utf-8")
        _write_csv(out / "all.csv", ["id", "synsetId", "subSynsetId", "modelId", "split"], split_rows)
    _write_csv(out / "captions.csv", ["uid", "caption"], caption_rows)
    info = dict(generator="c2p.corpora.synthetic", layout=layout, seed=seed, per_class=per_class,
                test_per_class=test_per_class, classes=classes, up_axis="y" if layout == "shapenet" else "z")
    (out / MANIFEST).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return out


def open_synthetic(root: str | Path, split: str = "train", **kw) -> Corpus:
    """Reader of a synthetic corpus in either layout (ShapeNet if taxonomy.json exists), named "synthetic"."""
    from c2p.corpora.modelnet import ModelNetCorpus
    from c2p.corpora.shapenet import ShapeNetCorpus

    kw.setdefault("name", "synthetic")
    if (Path(root) / "taxonomy.json").is_file():
        return ShapeNetCorpus(root, split, **kw)
    return ModelNetCorpus(root, split, **kw)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m c2p.corpora.synthetic", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder (new, empty, or an earlier synthetic corpus)")
    p.add_argument("--layout", choices=["shapenet", "modelnet"], default="shapenet")
    p.add_argument("--per-class", type=int, default=4, help="train objects per class")
    p.add_argument("--test-per-class", type=int, default=0, help="test objects per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", nargs="*", default=None, help=f"subset of {SYNTHETIC_CLASSES}")
    a = p.parse_args(argv)
    try:
        out = write_synthetic(a.out, a.layout, a.per_class, a.seed, a.test_per_class, a.classes)
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n = len(a.classes or SYNTHETIC_CLASSES)
    print(f"classes: {n}, train: {n * a.per_class}, test: {n * a.test_per_class}, layout: {a.layout}, seed: {a.seed}")
    print(out.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
