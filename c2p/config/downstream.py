"""Config of zero-shot evaluation and GDPA fine-tuning (``configs/downstream/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from c2p.config.core import ConfigError, option
from c2p.config.pretrain import RunConfig


@dataclass
class EvalDataConfig:
    corpus: str = option("synthetic", "corpus reader", choices=["synthetic", "shapenet55", "modelnet", "scanobjectnn", "manifest", "shapenet", "objaverse",
                                                               "modelnet_h5", "scanobjectnn_release", "openshape_modelnet40", "openshape_lvis"])
    root: str = option("", "corpus root")
    # The splits every corpus reader knows (c2p.corpora.base.SPLITS): refused here, not in the job.
    train_split: str = option("train", "split few-shot / supervised examples come from", choices=["train", "test", "all"])
    test_split: str = option("test", "split evaluated", choices=["train", "test", "all"])
    classes: list[str] = option([], "class names in label order (empty: from the corpus)")
    points: int = option(1024, "points per object fed to the depth renderer", ge=1)
    rotate_zup: bool = option(False, "rotate z-up to y-up (ModelNet: Rx(pi/2) then Ry(-pi/2))")
    swap_yz: bool = option(False, "swap the y and z columns instead (OpenShape's y_up: z-up data to y-up by a reflection)")
    sampling: str = option("random", "how data.points are taken from the stored points: random (seeded per object), first N, fps", choices=["random", "first", "fps"])
    sampling_seed: int = option(0, "seed of random sampling (0: the per-object draw of earlier releases)", ge=0)
    variant: str = option("", "reader variant, e.g. ScanObjectNN's OBJ_ONLY, OBJ_BG, PB_T50_RS (scanobjectnn_release); empty: the reader's default")
    normalize: bool = option(True, "centre and scale each object into the unit sphere before rendering")
    max_objects: int = option(0, "use at most this many objects per split, first by uid (0: all; smoke runs)", ge=0)


@dataclass
class EncoderConfig:
    model: str = option("ViT-B-32", "open_clip model name")
    pretrained: str = option("", "local CLIP weights (image + text towers)")
    depth_tower: str = option("", "exported CLIP2Point depth tower (.safetensors); empty: CLIP's image tower")
    views: int = option(10, "view set: the original 10 views or the 6-view set", choices=[10, 6])
    image_size: int = option(0, "depth map size in pixels (0: the CLIP model's input size)", ge=0)
    radius: float = option(0.02, "point radius of the depth renderer, NDC units", gt=0.0)
    dist: float = option(1.0, "camera distance of the depth views", gt=0.0)
    templates: list[str] = option(["image of a {}."], "prompt templates; {} is the class name")
    batch_size: int = option(64, "objects per encoder forward", ge=1)
    cache_dir: str = option("", "view-feature cache (empty: <run.dir>/<run.name>/cache/features)")
    device: str = option("auto", "auto: cuda if available else cpu", choices=["auto", "cpu", "cuda"])


@dataclass
class AdapterConfig:
    paths: str = option("both", "GDPA paths: both (gated), clip alone, depth alone", choices=["both", "clip", "depth"])
    dropout: float = option(0.5, "dropout in the aggregators", ge=0.0, le=1.0)
    gate_init: float = option(0.5, "initial weight of the CLIP path (released code: 0.5)", ge=0.0, le=1.0)


@dataclass
class FinetuneConfig:
    task: str = option("fewshot", "fewshot (K per class) or supervised (whole train split)", choices=["fewshot", "supervised"])
    shots: list[int] = option([16], "K values of a sweep", ge=1)
    seeds: list[int] = option([0], "seeds of a sweep", ge=0)
    epochs: int = option(100, "adapter epochs", ge=1)
    lr: float = option(1e-3, "AdamW learning rate", gt=0.0)
    weight_decay: float = option(1e-2, "AdamW weight decay", ge=0.0)
    batch_size: int = option(32, "adapter batch", ge=1)
    schedule: str = option("constant", "learning rate over epochs: constant, or cosine annealing to 0", choices=["constant", "cosine"])


@dataclass
class DownstreamConfig:
    run: RunConfig = field(default_factory=RunConfig)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def validate(self) -> None:
        if not self.data.root:
            raise ConfigError("data.root", self.data.root, "the corpus root of the evaluation data")
        if not self.encoder.templates:
            raise ConfigError("encoder.templates", self.encoder.templates, "at least one prompt template")
        for t in self.encoder.templates:
            if "{}" not in t:
                raise ConfigError("encoder.templates", t, "a template containing '{}' for the class name")
        if self.data.rotate_zup and self.data.swap_yz:
            raise ConfigError("data.swap_yz", True, "false when data.rotate_zup is true (one way from z-up to y-up)")
        if len(set(self.data.classes)) != len(self.data.classes):
            dup = sorted({c for c in self.data.classes if self.data.classes.count(c) > 1})
            raise ConfigError("data.classes", dup, "class names without repeats")
