"""Config of a render job: corpus → WebDataset shards (``configs/render/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from c2p.config.core import ConfigError, option


@dataclass
class CorpusConfig:
    name: str = option("synthetic", "corpus reader", choices=["synthetic", "shapenet", "shapenet55", "objaverse", "modelnet", "scanobjectnn", "manifest"])
    root: str = option("", "corpus root directory (or manifest/table file)")
    split: str = option("train", "split to read where the corpus has splits", choices=["train", "test", "all"])
    limit: int = option(0, "render at most this many objects, the first of the plan's keyed order: a fair sample (0: all)", ge=0)
    options: dict[str, Any] = option(default_factory=dict, doc="extra keyword arguments of open_corpus (e.g. a label table path)")


@dataclass
class ViewsConfig:
    # `views.set=6` on a command line parses as an int: accepted and stored as the string "6".
    set: str | int = option("10", "the original's view set", choices=["10", "6", 10, 6])
    dist: float = option(1.0, "camera distance (RGB: perspective at twice this)", gt=0.0)
    image_size: int = option(224, "render size in pixels", ge=8)
    image_format: str = option("png", "RGB encoding", choices=["png", "webp"])
    depth_png: bool = option(False, "also store 16-bit depth.<v>.png of each view")
    light: str = option("random", "directional light: seeded random per object, or fixed", choices=["random", "fixed"])

    def validate(self) -> None:
        self.set = str(self.set)


@dataclass
class ImgFeatConfig:
    model: str = option("", "open_clip model name for imgfeat.<tag>.npy (empty: no features)")
    pretrained: str = option("", "local weights path of that model")
    tag: str = option("", "feature tag in member names (default: model name)")
    batch_size: int = option(64, "views per forward pass", ge=1)
    actors: int = option(1, "feature actors holding the image tower (one per GPU on GPU nodes)", ge=1)


@dataclass
class JobConfig:
    shard_size: int = option(256, "objects per shard", ge=1)
    points: int = option(8192, "points stored per object", ge=1)
    seed: int = option(0, "render seed (per object: seed, uid)", ge=0)
    num_cpus: float = option(1.0, "CPUs per Ray render task", gt=0.0)
    num_gpus: float = option(0.0, "GPUs per Ray render task / feature actor", ge=0.0)
    max_retries: int = option(3, "Ray retries of a shard task (dead worker or transient error)", ge=0)
    max_in_flight: int = option(0, "shard tasks submitted at once (0: 2x cluster CPUs)", ge=0)
    object_timeout_s: float = option(300.0, "seconds to load, sample and render one object before it is recorded as an error (0: no limit)", ge=0.0)
    max_file_mb: float = option(2048.0, "largest source file (MiB) opened; larger ones are recorded as errors (0: no limit)", ge=0.0)
    max_faces: int = option(20_000_000, "most triangles in one mesh; larger ones are recorded as errors (0: no limit)", ge=0)
    write_thread: bool = option(True, "encode and write each sample in a thread of the task while the next object loads and renders (same bytes)")
    previews: int = option(4, "objects in previews/ contact sheets", ge=0)
    overwrite: bool = option(False, "start over when the output exists with other settings")
    progress: bool = option(True, "show a progress bar (objects/s, ETA) on stderr")


@dataclass
class RenderJobConfig:
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    out: str = option("", "output shard directory")
    views: ViewsConfig = field(default_factory=ViewsConfig)
    imgfeat: ImgFeatConfig = field(default_factory=ImgFeatConfig)
    job: JobConfig = field(default_factory=JobConfig)

    def validate(self) -> None:
        if not self.out:
            raise ConfigError("out", self.out, "an output directory (--out DIR or out=DIR)")
        if not self.corpus.root:
            raise ConfigError("corpus.root", self.corpus.root, "the corpus root (--root DIR or corpus.root=DIR)")
        # Member names are <key>.imgfeat.<tag>.npy: a dot in the tag would split the extension.
        for key, value in (("imgfeat.tag", self.imgfeat.tag), ("imgfeat.model", self.imgfeat.model if not self.imgfeat.tag else "")):
            if "." in value or "/" in value:
                raise ConfigError(key, value, "a feature tag without '.' or '/' (set imgfeat.tag)")
        if self.imgfeat.pretrained and not self.imgfeat.model:
            raise ConfigError("imgfeat.model", self.imgfeat.model, "an open_clip model name when imgfeat.pretrained is set")
