"""ModelNet40's 2048-point HDF5 release (``modelnet40_ply_hdf5_2048``, PointNet's), read and written.

On-disk layout (the zip, unpacked)::

    root/shape_names.txt                 40 class names, one per line, in label order
    root/train_files.txt                 the train h5 files, one path per line
    root/test_files.txt                  (paths as the release wrote them: data/modelnet40_ply_hdf5_2048/ply_data_test0.h5)
    root/ply_data_train0.h5 .. train4.h5 members data [N,2048,3] float32, label [N,1] uint8
    root/ply_data_test0.h5, test1.h5     (and normal [N,2048,3], faceId [N,2048], ignored)

The files of a split come from ``<split>_files.txt`` (each line's file name, looked up in
``root``), or, without that list, every ``ply_data_<split>*.h5`` in name order. uid =
``<split>-<row:05d>``, counting on across the split's files in list order. The clouds are
y-up as stored (PointNet's ``provider.rotate_point_cloud`` turns them about y, "the up
direction"): ``up_axis == "y"``.

A file is refused (CorpusError naming it) when its data is not [N,P,3], its label count is
not N, a label falls outside shape_names.txt, or the list names a file that is not there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from c2p.corpora.arrays import ArrayCorpus, read_h5_clouds, read_names, write_names
from c2p.corpora.base import CorpusError

__all__ = ["ModelNetH5Corpus", "write_modelnet_h5", "SHAPE_NAMES"]

SHAPE_NAMES = "shape_names.txt"


def split_files(root: Path, split: str) -> list[Path]:
    """The h5 files of ``split``: from ``<split>_files.txt`` if present, else by name pattern."""
    listing = root / f"{split}_files.txt"
    if listing.is_file():
        names = [Path(line.strip()).name for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise CorpusError(listing, f"lists {missing}, not found in {root}; expected every listed h5 file beside it")
        return [root / n for n in names]
    return sorted(root.glob(f"ply_data_{split}*.h5"))


class ModelNetH5Corpus(ArrayCorpus):
    """ModelNet40 2048-point HDF5 reader. ``root``: the unpacked ``modelnet40_ply_hdf5_2048`` folder."""

    name = "modelnet_h5"
    up_axis = "y"

    def __init__(self, root: str | Path, split: str = "test", name: str | None = None):
        super().__init__(root, split, name)
        names_file = self.root / SHAPE_NAMES
        self._set_classes(read_names(names_file))
        for s in ("train", "test") if split == "all" else (split,):
            files = split_files(self.root, s)
            if not files:
                raise CorpusError(self.root, f"no {s}_files.txt and no ply_data_{s}*.h5; expected the {s} split of the HDF5 release")
            row = 0
            for path in files:
                data, labels = read_h5_clouds(path, len(self.class_order), names_file)
                row += self._add_array(s, path, data, labels, first_row=row)


def write_modelnet_h5(root: str | Path, split: str, clouds: np.ndarray, labels: np.ndarray, shape_names: Sequence[str],
                      per_file: int = 2048) -> list[Path]:
    """Write ``split`` as the release does: ``ply_data_<split><i>.h5`` of at most ``per_file``
    clouds each (data [n,P,3] float32, label [n,1] uint8), ``<split>_files.txt`` listing them
    with the release's ``data/modelnet40_ply_hdf5_2048/`` prefix, and ``shape_names.txt``.

    clouds: [N,P,3] float; labels: [N] int in [0, len(shape_names)). Returns the h5 paths.
    """
    import h5py

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_names(root / SHAPE_NAMES, shape_names)
    paths = []
    for i, start in enumerate(range(0, len(clouds), per_file)):
        path = root / f"ply_data_{split}{i}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("data", data=np.asarray(clouds[start : start + per_file], dtype=np.float32))
            f.create_dataset("label", data=np.asarray(labels[start : start + per_file], dtype=np.uint8).reshape(-1, 1))
        paths.append(path)
    (root / f"{split}_files.txt").write_text("".join(f"data/modelnet40_ply_hdf5_2048/{p.name}\n" for p in paths), encoding="utf-8")
    return paths
