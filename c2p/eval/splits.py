"""Which objects evaluation sees: a corpus split read into memory, and the K-shot subset of it.

    split = load_split(cfg.data, cfg.data.test_split)        # points [N,P,3], labels [N]
    idx = sample_shots(train.labels, len(train.classes), shots=16, seed=0)   # K per class

Every draw is seeded from the data (an object's uid, a class index and the seed), never from
process state, so the same split gives the same points and shots in every process and the
view-feature cache keyed on the points stays valid.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from c2p.config.downstream import EvalDataConfig
from c2p.eval.errors import EvalError

__all__ = ["Split", "load_split", "check_classes", "object_points", "sample_shots"]

log = logging.getLogger(__name__)


@dataclass
class Split:
    """One split of a corpus, as evaluation sees it.

    points: [N,P,3] float32 (unit sphere if normalised, y-up if rotated); labels: [N] long indices
    into ``classes``; uids: N object ids; errors: objects that could not be loaded (uid, reason).
    """

    corpus: str
    split: str
    points: Tensor
    labels: Tensor
    classes: list[str]
    uids: list[str]
    errors: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.uids)


def check_classes(expected: list[str], corpus_labels: list[str], where: str) -> list[int]:
    """Map corpus label indices to positions in ``expected`` (the configured class list).

    Returns ``remap`` with ``remap[corpus_index] = expected_index``. Raises :class:`EvalError`
    naming the missing and extra class names when the two lists differ as sets.
    """
    if not expected:
        return list(range(len(corpus_labels)))
    missing = [c for c in corpus_labels if c not in expected]
    extra = [c for c in expected if c not in corpus_labels]
    if missing or extra:
        raise EvalError(
            f"data.classes does not match the labels of {where}: "
            f"corpus labels not in data.classes: {missing}; data.classes not in the corpus: {extra} "
            f"(corpus has {len(corpus_labels)} labels, data.classes has {len(expected)})"
        )
    return [expected.index(c) for c in corpus_labels]


def object_points(record, n: int, sampling: str = "random", seed: int = 0) -> np.ndarray:
    """[n,3] float32 points of an ObjectRecord: its stored points taken by ``sampling``
    (random | first | fps, :func:`c2p.eval.sampling.sample_indices`), or sampled from its mesh.

    The generator is seeded from the uid (crc32, not Python's salted hash) and ``seed`` so the
    same object always gives the same points, and the feature cache stays valid across processes.
    """
    from c2p.eval.sampling import sample_indices
    from c2p.geometry import mesh_triangles, sample_surface

    gen = torch.Generator().manual_seed(zlib.crc32(record.ref.uid.encode()) + (seed << 32))
    if record.points is not None:
        pts = torch.as_tensor(np.asarray(record.points, dtype=np.float32))
        if pts.dim() != 2 or pts.shape[1] != 3 or pts.shape[0] == 0:
            raise EvalError(f"object {record.ref.uid}: points of shape {list(pts.shape)}; expected [N>0, 3]")
        return pts[sample_indices(pts, n, sampling, gen)].numpy()
    mesh = record.mesh
    if mesh is None:
        raise EvalError(f"object {record.ref.uid}: neither points nor a mesh")
    verts, faces = mesh_triangles(mesh)  # a GLB scene (Objaverse): its meshes placed in world space
    verts, faces = torch.as_tensor(verts.astype(np.float32)), torch.as_tensor(faces)
    if len(verts) == 0 or len(faces) == 0:
        raise EvalError(f"object {record.ref.uid}: empty mesh ({len(verts)} vertices, {len(faces)} faces)")
    return sample_surface(verts, faces, n, generator=gen).float().numpy()


def load_split(cfg: EvalDataConfig, split: str) -> Split:
    """Read ``split`` of the configured corpus into memory.

    Objects that fail to load are recorded in ``Split.errors`` and skipped (logged), never fatal.
    Raises :class:`EvalError` if the split has no usable object or its labels do not match
    ``cfg.classes``.
    """
    from c2p.corpora import ErrorRecord, open_corpus

    corpus = open_corpus(cfg.corpus, cfg.root, split=split, **({"variant": cfg.variant} if cfg.variant else {}))
    where = f"corpus {cfg.corpus!r} at {cfg.root} split {split!r}"
    if getattr(corpus, "up_axis", "y") == "z" and not (cfg.rotate_zup or cfg.swap_yz):
        log.warning("%s stores z-up geometry but data.rotate_zup is false: the depth views expect y-up", where)
    labels = list(corpus.labels)
    remap = check_classes(list(cfg.classes), labels, where)
    classes = list(cfg.classes) if cfg.classes else labels
    points, ys, uids, errors = [], [], [], []
    for rec in corpus.records():
        if cfg.max_objects and len(uids) >= cfg.max_objects:
            break
        if isinstance(rec, ErrorRecord):
            errors.append((rec.uid, rec.reason))
            continue
        try:
            pts = object_points(rec, cfg.points, cfg.sampling, cfg.sampling_seed)
        except Exception as e:  # one broken object must not end the evaluation
            errors.append((rec.ref.uid, f"{type(e).__name__}: {e}"))
            continue
        if not 0 <= rec.ref.label_index < len(labels):
            errors.append((rec.ref.uid, f"label index {rec.ref.label_index} outside the corpus's {len(labels)} labels"))
            continue
        points.append(pts)
        ys.append(remap[rec.ref.label_index])
        uids.append(rec.ref.uid)
    if errors:
        log.warning("%s: %d objects skipped, first: %s", where, len(errors), errors[0])
    if not uids:
        raise EvalError(f"{where} is empty: no loadable object ({len(errors)} unreadable); expected at least one")
    pts = torch.from_numpy(np.stack(points))
    if cfg.normalize:
        from c2p.geometry import normalize_unit_sphere

        pts = normalize_unit_sphere(pts)
    if cfg.rotate_zup:
        from c2p.camera import rotate_zup_to_yup

        pts = rotate_zup_to_yup(pts)
    if cfg.swap_yz:  # OpenShape's convention: a column swap (a reflection), not a rotation
        pts = pts[..., [0, 2, 1]]
    return Split(cfg.corpus, split, pts.float().contiguous(), torch.tensor(ys, dtype=torch.long), classes, uids, errors)


def sample_shots(labels: Tensor, num_classes: int, shots: int, seed: int) -> Tensor:
    """Indices of ``shots`` objects per class, drawn without replacement from ``seed``; sorted.

    labels: [N] long in [0, num_classes) → [num_classes * shots] long. The draw of a class
    depends only on (seed, class, the class's objects), so adding K keeps it reproducible.
    Raises :class:`EvalError` naming the class when it has fewer than ``shots`` objects.
    """
    out = []
    for c in range(num_classes):
        idx = (labels == c).nonzero().flatten()
        if idx.numel() < shots:
            raise EvalError(f"few-shot K={shots}: class index {c} has {idx.numel()} training objects; expected at least {shots}")
        g = torch.Generator().manual_seed(seed * 1_000_003 + c)
        out.append(idx[torch.randperm(idx.numel(), generator=g)[:shots]])
    return torch.cat(out).sort().values
