"""Config of zero-shot evaluation and GDPA fine-tuning (``configs/downstream/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from c2p.config.core import ConfigError, option
from c2p.config.pretrain import RunConfig


@dataclass
class EvalDataConfig:
    corpus: str = option("synthetic", "corpus reader", choices=["synthetic", "shapenet55", "modelnet", "scanobjectnn", "manifest", "shapenet", "objaverse"])
    root: str = option("", "corpus root")
    train_split: str = option("train", "split few-shot / supervised examples come from")
    test_split: str = option("test", "split evaluated")
    classes: list[str] = option([], "class names in label order (empty: from the corpus)")
    points: int = option(1024, "points per object fed to the depth renderer", ge=1)
    rotate_zup: bool = option(False, "rotate z-up to y-up (ModelNet: Rx(pi/2) then Ry(-pi/2))")


@dataclass
class EncoderConfig:
    model: str = option("ViT-B-32", "open_clip model name")
    pretrained: str = option("", "local CLIP weights (image + text towers)")
    depth_tower: str = option("", "exported CLIP2Point depth tower (.safetensors); empty: CLIP's image tower")
    views: str = option("10", "view set", choices=["10", "6"])
    image_size: int = option(224, "depth map size", ge=8)
    templates: list[str] = option(["image of a {}."], "prompt templates; {} is the class name")
    batch_size: int = option(64, "objects per encoder forward", ge=1)


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
        for t in self.encoder.templates:
            if "{}" not in t:
                raise ConfigError("encoder.templates", t, "a template containing '{}' for the class name")
