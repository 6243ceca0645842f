"""Export a mesh corpus (the demo's synthetic world) as the released evaluation files, so the
readers of the real releases, and the evaluation suite behind them, run on data made here.

``python -m c2p.corpora.released --world runs/demo/world --out runs/demo/released [--points 2048] [--openshape-points 10000]``

Points are sampled on each mesh's surface (seeded by the object's uid), centred and scaled
into the unit sphere, and written in each release's own axis convention and layout::

    out/modelnet40_ply_hdf5_2048/   ModelNet40 HDF5 (train + test), y-up         reader modelnet_h5
    out/h5_files/main_split_nobg/   ScanObjectNN OBJ_ONLY (train + test), y-up   reader scanobjectnn_release
    out/h5_files/main_split/        ScanObjectNN PB_T50_RS: each cloud shifted (up to 0.5 of its
                                    radius), turned about the up axis and scaled (0.75-1.25x)
    out/openshape/meta_data/        OpenShape's ModelNet40 test_pc + Objaverse-LVIS (test), z-up
    out/released.json               what was written, and the suite's ``roots`` for it

The world's test split becomes every release's test set, its train split the train sets.
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from pathlib import Path

import numpy as np

from c2p.corpora.base import CorpusError, ErrorRecord

__all__ = ["export_released", "main"]


def _sample(record, n: int) -> np.ndarray:
    """[n,3] float32 surface points of a loaded mesh record, unit sphere, in its stored axes."""
    import torch

    from c2p.geometry import mesh_triangles, normalize_unit_sphere, sample_surface

    verts, faces = mesh_triangles(record.mesh)
    gen = torch.Generator().manual_seed(zlib.crc32(record.ref.uid.encode()))
    pts = sample_surface(torch.as_tensor(verts, dtype=torch.float32), torch.as_tensor(faces), n, generator=gen)
    return normalize_unit_sphere(pts).numpy()


def _yup(points: np.ndarray, up_axis: str) -> np.ndarray:
    """Stored axes → y-up (a z-up world turned by (x, y, z) → (-y, z, -x), the rotation c2p.camera uses)."""
    return np.stack([-points[:, 1], points[:, 2], -points[:, 0]], axis=1) if up_axis == "z" else points


def _perturb(points: np.ndarray, uid: str) -> np.ndarray:
    """PB_T50_RS-style copy: translation up to 0.5 of the radius, rotation about y, scale 0.75-1.25."""
    rng = np.random.default_rng(zlib.crc32(f"pb_t50_rs/{uid}".encode()))
    t = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(t), np.sin(t)
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return ((points @ rot.T) * rng.uniform(0.75, 1.25, size=3) + rng.uniform(-0.5, 0.5, size=3)).astype(np.float32)


def _read_split(world: Path, split: str, n: int) -> tuple[list[str], list[str], list[np.ndarray], list[str]]:
    """(uids, class names, y-up clouds [n,3], classes) of one split of a mesh corpus."""
    from c2p.corpora import open_corpus

    corpus = open_corpus("synthetic", world, split=split)
    uids, labels, clouds = [], [], []
    for rec in corpus.records():
        if isinstance(rec, ErrorRecord):
            raise ValueError(f"world: object {rec.uid} at {rec.source} is unreadable ({rec.reason}); expected a clean corpus")
        uids.append(rec.ref.uid.replace("/", "-"))
        labels.append(rec.ref.label)
        clouds.append(_yup(_sample(rec, n), corpus.up_axis))
    return uids, labels, clouds, list(corpus.labels)


def export_released(world: str | Path, out: str | Path, points: int = 2048, openshape_points: int = 10000) -> dict[str, str]:
    """Write every release format under ``out`` (layout in the module doc) from the mesh corpus
    at ``world``; returns reader name → root, the ``roots`` of a suite config."""
    from c2p.corpora.modelnet_h5 import write_modelnet_h5
    from c2p.corpora.openshape import write_openshape_lvis, write_openshape_modelnet40
    from c2p.corpora.scanobjectnn import write_scanobjectnn

    world, out = Path(world), Path(out)
    splits = {s: _read_split(world, s, max(points, openshape_points)) for s in ("train", "test")}
    classes = splits["test"][3]
    if not splits["test"][0]:
        raise ValueError(f"world: {world} has no test split; expected test objects (--test-per-class)")
    for split, (uids, labels, clouds, _) in splits.items():
        if not uids:
            continue
        idx = np.array([classes.index(c) for c in labels])
        few = np.stack([c[:points] for c in clouds])
        write_modelnet_h5(out / "modelnet40_ply_hdf5_2048", split, few, idx, classes)
        write_scanobjectnn(out / "h5_files", "OBJ_ONLY", split, few, idx, classes)
        write_scanobjectnn(out / "h5_files", "PB_T50_RS", split, np.stack([_perturb(c, u) for c, u in zip(few, uids)]), idx, classes)
    uids, labels, clouds, _ = splits["test"]
    # OpenShape stores z-up and swaps y and z when reading: store the swap of our y-up clouds
    zup = [c[:openshape_points][:, [0, 2, 1]] for c in clouds]
    meta = out / "openshape" / "meta_data"
    write_openshape_modelnet40(meta, uids, labels, zup)
    write_openshape_lvis(meta, uids, labels, zup)
    roots = {
        "modelnet_h5": str(out / "modelnet40_ply_hdf5_2048"),
        "scanobjectnn_release": str(out / "h5_files"),
        "openshape_modelnet40": str(meta / "modelnet40"),
        "openshape_lvis": str(meta),
    }
    info = {"world": str(world), "points": points, "openshape_points": openshape_points, "classes": classes,
            "objects": {s: len(v[0]) for s, v in splits.items()}, "roots": roots}
    (out / "released.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return roots


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m c2p.corpora.released", description=__doc__.split("\n")[0])
    p.add_argument("--world", required=True, help="mesh corpus folder (c2p.corpora.synthetic, either layout)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--points", type=int, default=2048, help="points per cloud of the HDF5 releases")
    p.add_argument("--openshape-points", type=int, default=10000, help="points per cloud of OpenShape's files")
    a = p.parse_args(argv)
    if a.points < 1 or a.openshape_points < 1:
        print(f"error: --points {a.points} / --openshape-points {a.openshape_points}: expected >= 1", file=sys.stderr)
        return 2
    try:
        roots = export_released(a.world, a.out, a.points, a.openshape_points)
    except (ValueError, OSError, CorpusError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(roots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
