"""Config of the end-to-end demo (``configs/demo/demo.yaml``, ``launch/demo.py``, :mod:`c2p.demo`).

The demo builds its own world: a synthetic corpus, a small CLIP trained on its RGB renders
and captions, CLIP2Point pre-training on 2 local DeepSpeed ranks, then zero-shot, few-shot
and retrieval on held-out objects. Its values are set on the pre-training and downstream
configs named in ``configs`` (:mod:`c2p.demo.settings`) when the demo config is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from c2p.config.core import ConfigError, option
from c2p.config.pretrain import RunConfig


@dataclass
class WorldConfig:
    classes: int = option(12, "synthetic classes used (the first N of SYNTHETIC_CLASSES)", ge=2)
    per_class: int = option(24, "training objects per class", ge=1)
    test_per_class: int = option(8, "held-out objects per class", ge=1)
    image_size: int = option(64, "RGB render and depth map size", ge=16)
    shard_size: int = option(64, "objects per shard", ge=1)
    points: int = option(2048, "points stored per object", ge=64)
    depth_radius: float = option(0.03, "point radius (NDC) of every depth map: pre-training, evaluation and retrieval alike", gt=0.0)


@dataclass
class ClipStageConfig:
    model: str = option("c2p-small", "open_clip config of the small CLIP")
    epochs: int = option(6, "open_clip_train epochs over the image-text pairs", ge=1)
    batch_size: int = option(64, "open_clip_train batch", ge=2)
    lr: float = option(1e-3, "open_clip_train learning rate", gt=0.0)
    threads: int = option(2, "torch threads of open_clip_train (part of what fixes its exact weights)", ge=1)


@dataclass
class PretrainStageConfig:
    steps: int = option(150, "CLIP2Point pre-training steps", ge=1)
    batch_size: int = option(64, "global batch", ge=2)
    lr: float = option(1e-3, "peak learning rate", gt=0.0)
    ranks: int = option(2, "local DeepSpeed ranks", ge=1)
    zero_stage: int = option(2, "DeepSpeed ZeRO stage", choices=[0, 1, 2, 3])
    points: int = option(1024, "points in each depth map (as many as evaluation renders)", ge=64)
    point_keep: float = option(0.5, "each depth map of the intra-modality pair renders its own sample of `points` "
                               "out of points / point_keep loaded per object (1: the original, one sample for both)", gt=0.0, le=1.0)
    ablation: bool = option(True, "also pre-train without the intra-modality term (the paper's ablation)")

    @property
    def loaded_points(self) -> int:
        """Points loaded per object per step (``data.points`` of the pre-training run)."""
        return round(self.points / self.point_keep)


@dataclass
class FewshotStageConfig:
    shots: list[int] = option([1, 4, 16], "K of the few-shot table", ge=1)
    seeds: list[int] = option([0, 1, 2], "seeds per K", ge=0)
    epochs: int = option(60, "adapter epochs", ge=1)
    views: int = option(10, "view set for evaluation", choices=[10, 6])


@dataclass
class StageConfigFiles:
    """The configs the demo's values are set on (:mod:`c2p.demo.settings`)."""

    # Relative to the demo config's folder, as ``_base_`` is: the demo config and the configs it
    # builds on travel together, wherever the package is installed.
    pretrain: str = option("pretrain.yaml", "pre-training config the demo's values are set on (relative: to the demo config's folder)")
    downstream: str = option("downstream.yaml", "zero-shot / few-shot config the demo's values are set on (relative: to the demo config's folder)")


@dataclass
class DemoConfig:
    run: RunConfig = field(default_factory=lambda: RunConfig(name="demo"))
    world: WorldConfig = field(default_factory=WorldConfig)
    clip: ClipStageConfig = field(default_factory=ClipStageConfig)
    pretrain: PretrainStageConfig = field(default_factory=PretrainStageConfig)
    fewshot: FewshotStageConfig = field(default_factory=FewshotStageConfig)
    configs: StageConfigFiles = field(default_factory=StageConfigFiles)

    def validate(self) -> None:
        from c2p.corpora.synthetic import SYNTHETIC_CLASSES

        if self.world.classes > len(SYNTHETIC_CLASSES):
            raise ConfigError("world.classes", self.world.classes, f"at most {len(SYNTHETIC_CLASSES)} (the synthetic classes)")
        if self.pretrain.loaded_points > self.world.points:
            raise ConfigError("pretrain.point_keep", self.pretrain.point_keep,
                              f"at least pretrain.points / world.points = {self.pretrain.points / self.world.points:.3g} "
                              f"(each object stores {self.world.points} points)")
        if max(self.fewshot.shots) > self.world.per_class:
            raise ConfigError("fewshot.shots", self.fewshot.shots, f"K <= world.per_class ({self.world.per_class})")
