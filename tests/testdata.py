"""On-disk test data, built one way for both tiers.

- shard directories: objects made from arrays (:func:`object_sample`), written with the real
  :class:`~c2p.schema.ShardWriter` and indexed with :class:`~c2p.schema.ShardIndex`
  (:func:`write_shard_dir`), so every reader under test sees exactly what the render job writes;
  :func:`write_loader_corpus` makes the loader's content-encoded ones;
- corpora in their real layouts: :func:`write_broken_shapenet` (the render job's inputs, broken
  ones included), :func:`write_modelnet_shapes` (hand-built shapes for evaluation);
- :func:`tiny_overrides`: the tiny pre-training config pointed at a shard directory;
- towers whose outputs are known: :class:`CoverageTower` (visual), :class:`WordSumText` with
  :class:`WordTokenizer` (text).
- :func:`vit_forward_flops`: a hand count of a ViT's FLOPs, what the measured MFU is checked against.

    sample = object_sample("blobs", "o0001", "c1", 1, points, imgfeat={"tiny": feats})
    write_shard_dir(root, [[s0, s1], [s2]], corpus="blobs", labels=["c0", "c1"])
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from c2p.schema import SampleMeta, ShardIndex, ShardWriter, encode_sample, make_key
from c2p.sharddir import shard_name


def object_sample(
    corpus: str,
    uid: str,
    label: str,
    label_index: int,
    points: np.ndarray,
    *,
    views: Sequence[Sequence[float]] | None = None,
    rgb: Sequence[np.ndarray] | None = None,
    depth: Sequence[np.ndarray] | None = None,
    imgfeat: dict[str, np.ndarray] | None = None,
    caption: str = "",
    source: str = "test",
    stored_points: int | None = None,
    drop: Sequence[str] = (),
) -> dict[str, Any]:
    """One encoded sample. ``points``: [P,3]; ``views``: [V,3] (elev°, azim°, dist), default one
    front view per RGB image (or one); ``caption`` goes to ``meta.json`` and the ``txt`` member;
    ``drop``: member names to leave out (a broken sample)."""
    n_views = len(rgb) if rgb is not None else 1
    views = [list(map(float, v)) for v in views] if views is not None else [[0.0, 90.0 * v, 1.0] for v in range(n_views)]
    meta = SampleMeta(uid=uid, corpus=corpus, label=label, label_index=label_index, source=source, views=views,
                      points=stored_points if stored_points is not None else len(points), caption=caption)
    sample = encode_sample(make_key(corpus, uid), points, meta, rgb=rgb, depth=depth, imgfeat=imgfeat, caption=caption or None)
    for name in drop:
        del sample[name]
    return sample


def write_shard_dir(root: Path, shards: Sequence[Sequence[dict[str, Any]]], *, corpus: str, labels: Sequence[str],
                    index: bool = True, first: int = 0) -> Path:
    """``shards[i]``'s samples into ``root/shard-<first+i>.tar`` and, with ``index``, an
    ``index.json`` counting them. Returns ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    counts = {}
    for i, samples in enumerate(shards):
        name = shard_name(first + i)
        with ShardWriter(root / name) as w:
            for sample in samples:
                w.write(sample)
        counts[name] = len(samples)
    if index:
        ShardIndex(corpus=corpus, settings={}, labels=list(labels), shards=counts, total_objects=sum(counts.values())).save(root)
    return root


def unit_sphere_points(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n,3] Gaussian points scaled to max norm 1."""
    p = rng.standard_normal((n, 3))
    return p / np.linalg.norm(p, axis=1).max()


# ----------------------------------------------------------------------------- the loader's corpora

# Content-encoded samples: view ``v`` has a uniform RGB colour and an ``imgfeat`` row that both
# encode ``v``, and meta.json's views give view ``v`` the elevation ``10·v``, so a batch can be
# checked against what was written.
LOADER_VIEWS = 3
LOADER_POINTS = 64
LOADER_SIDE = 16  # stored render side; the stream resizes to cfg.image_size
LOADER_FEAT_DIM = 8


def view_colour(v: int) -> np.ndarray:
    """The uniform RGB colour of view ``v``: uint8 [3]."""
    return np.array([40 * v + 20, 200 - 30 * v, 90], dtype=np.uint8)


def loader_sample(corpus: str, uid: str, label: int, rng: np.random.Generator, *, points: bool = True) -> dict[str, Any]:
    """One content-encoded sample (``points=False``: without ``points.npy``, a broken one)."""
    pts = rng.uniform(-0.5, 0.5, size=(LOADER_POINTS, 3)).astype(np.float32)
    rgb = [np.broadcast_to(view_colour(v), (LOADER_SIDE, LOADER_SIDE, 3)).copy() for v in range(LOADER_VIEWS)]
    feats = np.stack([np.full(LOADER_FEAT_DIM, v + 1.0) for v in range(LOADER_VIEWS)])
    return object_sample(corpus, uid, f"class{label}", label, pts, views=[[10.0 * v, 45.0 * v, 1.0] for v in range(LOADER_VIEWS)],
                         rgb=rgb, imgfeat={"tiny": feats}, source=f"/src/{uid}", drop=() if points else ("points.npy",))


def write_loader_corpus(root: Path, corpus: str, shards: int, per_shard: int, seed: int = 0) -> Path:
    """A shard directory with index.json: ``shards`` tars of ``per_shard`` samples, labels 0..3."""
    rng = np.random.default_rng(seed)
    samples = [[loader_sample(corpus, f"s{s}o{i}", (s * per_shard + i) % 4, rng) for i in range(per_shard)] for s in range(shards)]
    return write_shard_dir(root, samples, corpus=corpus, labels=[f"class{i}" for i in range(4)])


def write_loader_corpora(base: Path) -> dict[str, Path]:
    """``alpha`` (4 shards x 8), ``beta`` (2 x 8) and ``broken``: one good shard, a truncated
    copy, a garbage tar, and a tar with a sample missing its points."""
    from c2p.schema import SHARD_PATTERN, ShardIndex

    alpha = write_loader_corpus(base / "alpha", "alpha", shards=4, per_shard=8, seed=1)
    beta = write_loader_corpus(base / "beta", "beta", shards=2, per_shard=8, seed=2)
    broken = write_loader_corpus(base / "broken", "broken", shards=2, per_shard=8, seed=3)
    whole = (broken / SHARD_PATTERN.format(1)).read_bytes()
    (broken / SHARD_PATTERN.format(1)).write_bytes(whole[: len(whole) // 2 + 100])
    (broken / SHARD_PATTERN.format(2)).write_bytes(np.random.default_rng(0).bytes(5000))
    rng = np.random.default_rng(4)
    write_shard_dir(broken, [[loader_sample("broken", f"x{i}", i, rng, points=(i != 2)) for i in range(4)]], corpus="broken",
                    labels=[], index=False, first=3)
    index = ShardIndex.load(broken)
    index.shards.update({SHARD_PATTERN.format(2): 8, SHARD_PATTERN.format(3): 4})
    index.save(broken)
    return {"alpha": alpha, "beta": beta, "broken": broken}


def loader_config(shards: Sequence[Path], **kw: Any) -> Any:
    """A small DataConfig over ``shards`` (32 points, 24 px, buffer 16, no workers) with ``kw`` on top."""
    from c2p.config.pretrain import DataConfig

    return DataConfig(**{**dict(shards=[str(s) for s in shards], points=32, shuffle_buffer=16, workers=0, image_size=24), **kw})


def take(stream: Any, n: int) -> list[dict]:
    """The first ``n`` batches of a stream."""
    out = []
    for batch in stream:
        out.append(batch)
        if len(out) == n:
            break
    return out


# ----------------------------------------------------------------------------- corpora in their real layouts

BROKEN_CLASSES = ["airplane", "box", "chair", "cone", "lamp", "mug", "sphere", "table"]
BROKEN_LISTING = {"empty": "empty file", "dir": "is a directory"}  # caught when the corpus is listed
BROKEN_LOAD = {"garbage", "nanverts"}  # caught when the object is loaded


def write_broken_shapenet(root: Path) -> Path:
    """The synthetic corpus in ShapeNet layout, one object of each of :data:`BROKEN_CLASSES`
    (the chair without its texture image: still a good object, the reader falls back to the
    material colour), plus 4 broken chairs in all.csv's train split: an empty OBJ, a directory
    where the OBJ should be (:data:`BROKEN_LISTING`), garbage bytes and NaN vertices
    (:data:`BROKEN_LOAD`)."""
    from c2p.corpora.synthetic import SYNSET_IDS, write_synthetic

    root = write_synthetic(root, layout="shapenet", per_class=1, seed=0, classes=BROKEN_CLASSES)
    synset = SYNSET_IDS["chair"]
    good = next((root / synset).iterdir())
    (good / "images" / "texture0.png").unlink()
    broken = ["empty", "dir", *sorted(BROKEN_LOAD)]
    for name in broken:
        models = root / synset / f"zz{name}" / "models"
        models.mkdir(parents=True)
        obj = models / "model_normalized.obj"
        if name == "empty":
            obj.write_bytes(b"")
        elif name == "dir":
            obj.mkdir()
        elif name == "garbage":
            obj.write_bytes(np.random.default_rng(0).bytes(3000))
        else:
            obj.write_text("v nan 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 1 3 4\n")
    with open(root / "all.csv", "a") as f:
        for i, name in enumerate(broken):
            f.write(f"{1000 + i},{synset},{synset},zz{name},train\n")
    return root


def write_modelnet_shapes(root: Path, per_class: int, splits: Sequence[str] = ("test",)) -> Path:
    """A ModelNet-layout corpus of three hand-built shapes: ball (sphere), rod (long thin box
    along z), plate (flat square). Sizes vary a little so no two objects are the same."""
    import trimesh

    from c2p.corpora.meshio import write_off

    for split in splits:
        for i in range(per_class):
            s = 1.0 + 0.1 * i
            shapes = {
                "ball": trimesh.creation.icosphere(subdivisions=2, radius=s),
                "rod": trimesh.creation.box(extents=(0.08 * s, 0.08 * s, 2.0 * s)),
                "plate": trimesh.creation.box(extents=(1.5 * s, 1.5 * s, 0.03)),
            }
            for name, mesh in shapes.items():
                path = root / name / split / f"{name}_{split}_{i:04d}.off"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_off(path, mesh.vertices, mesh.faces)
    return root


def downstream_config(tmp_path: Path, root: Path, corpus: str, *overrides: str) -> Any:
    """A DownstreamConfig over the corpus at ``root`` (CPU, reports under ``tmp_path/runs/t``)."""
    from c2p.config.core import load_config
    from c2p.config.downstream import DownstreamConfig

    return load_config(DownstreamConfig, None, [f"data.root={root}", f"data.corpus={corpus}", f"run.dir={tmp_path / 'runs'}",
                                                "run.name=t", "encoder.device=cpu", *overrides])


# ----------------------------------------------------------------------------- run settings


def tiny_overrides(shards: Path, run_dir: Path, name: str, *extra: str) -> list[str]:
    """Overrides pointing configs/pretrain/tiny.yaml at ``shards`` (image features ``tiny``) and ``run_dir/name``."""
    return [f"data.shards=[{shards}]", "data.imgfeat_tag=tiny", f"run.dir={run_dir}", f"run.name={name}", *extra]


# The demo shortened to a few minutes: 4 classes, c2p-tiny, a few steps and epochs.
DEMO_SHORT = [
    "world.classes=4", "world.per_class=6", "world.test_per_class=3", "world.image_size=32", "world.shard_size=8",
    "world.points=512", "clip.model=c2p-tiny", "clip.epochs=1", "clip.batch_size=32", "clip.threads=1",
    "pretrain.steps=6", "pretrain.batch_size=16", "pretrain.points=256",
    "fewshot.shots=[1,2]", "fewshot.seeds=[0,1]", "fewshot.epochs=5", "fewshot.views=6",
]


# ----------------------------------------------------------------------------- hand-built towers (known outputs)


class CoverageTower(nn.Module):
    """A visual tower whose output is known: feature = [covered fraction of the image, 0.3].

    A pixel is covered when its first channel is below the background value: the depth
    normaliser maps covered pixels into [0, 200/255] and the background to 1.0 before CLIP's
    mean/std.
    """

    def __init__(self):
        super().__init__()
        from c2p.imagenorm import CLIP_MEAN, CLIP_STD

        self.background = (1.0 - float(CLIP_MEAN[0])) / float(CLIP_STD[0])
        self.dummy = nn.Parameter(torch.zeros(1))  # so module_hash / .to() have state

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        covered = (images[:, 0] < self.background - 1e-3).float().mean(dim=(1, 2))
        return torch.stack([covered, torch.full_like(covered, 0.3)], dim=1) + 0 * self.dummy


class WordTokenizer:
    """Prompts → word ids (0 = padding, unknown words 0 too): [B, 8] long."""

    def __init__(self, vocab: dict[str, int]):
        self.vocab = vocab

    def __call__(self, texts: list[str]) -> torch.Tensor:
        ids = [[self.vocab.get(w, 0) for w in re.findall(r"[a-z]+", t.lower())][:8] for t in texts]
        return torch.tensor([row + [0] * (8 - len(row)) for row in ids])


class WordSumText(nn.Module):
    """A text tower whose output is known: the sum of its words' vectors."""

    def __init__(self, vectors: torch.Tensor):
        super().__init__()
        self.words = nn.Embedding.from_pretrained(torch.cat([torch.zeros(1, vectors.shape[1]), vectors]))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.words(tokens).sum(dim=1)


def vit_forward_flops(image: int, patch: int, width: int, layers: int, embed: int, mlp_ratio: int = 4) -> int:
    """Hand count of one image through an open_clip ViT (2 FLOPs per multiply-add): the patch
    convolution, per block the QKV, output, and two MLP projections and attention's QKᵀ and AV
    over T = patches + 1 (class) tokens, and the final projection to the embedding."""
    grid = (image // patch) ** 2
    tokens = grid + 1
    conv = 2 * grid * (3 * patch * patch) * width
    block = (2 * tokens * width * 3 * width + 2 * tokens * width * width  # qkv, out
             + 2 * 2 * tokens * width * mlp_ratio * width  # fc1, fc2
             + 2 * 2 * tokens * tokens * width)  # QKᵀ, AV over all heads
    return conv + layers * block + 2 * width * embed
