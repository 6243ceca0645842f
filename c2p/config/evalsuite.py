"""Config of the evaluation suite (``configs/eval/suite.yaml``) and of the protocols it runs
(``configs/eval/protocols/*.yaml``).

A protocol is everything that makes two papers' numbers for one model differ: which release
of a dataset is read, points per object and how they are taken, the axis convention, the
views, the prompt set and the metrics. Protocols are data, not code paths: the suite runs
each (protocol, dataset) through the same zero-shot code with that protocol's settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from c2p.config.core import ConfigError, option
from c2p.config.downstream import EncoderConfig
from c2p.config.pretrain import RunConfig

__all__ = ["ProtocolDataset", "ProtocolConfig", "SuiteFewshot", "SuiteConfig", "PublishedNumber", "PublishedNumbers", "METRICS", "AXES"]

METRICS = ("top1", "top3", "top5", "mean_class_acc")
AXES = ("as_stored", "rotate_zup", "swap_yz")
READERS = ["modelnet_h5", "scanobjectnn_release", "openshape_modelnet40", "openshape_lvis", "modelnet", "scanobjectnn", "synthetic"]


@dataclass
class ProtocolDataset:
    name: str = option("", "the table's row: modelnet40, scanobjectnn, objaverse_lvis, ...")
    reader: str = option("modelnet_h5", "corpus reader of the release the protocol reads", choices=READERS)
    variant: str = option("", "reader variant (ScanObjectNN: OBJ_ONLY, OBJ_BG, PB_T50_RS)")
    split: str = option("test", "split evaluated")
    train_split: str = option("", "split K-shot examples come from (empty: no K-shot rows for this dataset)")
    axis: str = option("as_stored", "stored axes to the renderer's y-up world: as_stored, rotate_zup (Rx(pi/2) Ry(-pi/2)), swap_yz", choices=list(AXES))
    points: int = option(0, "points per object for this dataset (0: the protocol's points)", ge=0)

    def validate(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError("datasets[].name", self.name, "a non-empty row name without '/'")


@dataclass
class ProtocolConfig:
    name: str = option("", "column name in the table (also the output folder)")
    title: str = option("", "one line saying whose protocol this is")
    points: int = option(1024, "points per object fed to the depth renderer", ge=1)
    sampling: str = option("first", "how the points are taken from the stored cloud", choices=["first", "fps", "random"])
    seed: int = option(0, "seed of random sampling", ge=0)
    normalize: bool = option(True, "centre and scale each object into the unit sphere")
    views: int = option(10, "depth views per object (the original's 10 or 6)", choices=[10, 6])
    templates: list[str] = option(["image of a {}."], "prompt templates; text features are the normalised mean over them")
    metrics: list[str] = option(list(METRICS), "metrics shown in the table", choices=list(METRICS))
    datasets: list[ProtocolDataset] = option([], "the datasets this protocol evaluates, each from its own release")

    def validate(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError("name", self.name, "a non-empty protocol name without '/'")
        if not self.templates or any("{}" not in t for t in self.templates):
            raise ConfigError("templates", self.templates, "at least one template, each containing '{}'")
        if not self.datasets:
            raise ConfigError("datasets", self.datasets, "at least one dataset")
        for d in self.datasets:
            d.validate()
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ConfigError("datasets", names, "each dataset name once")


@dataclass
class SuiteFewshot:
    shots: list[int] = option([], "K of the K-shot rows (empty: zero-shot only)", ge=1)
    seeds: list[int] = option([0, 1, 2], "seeds of each K (the table shows mean ± std over them)", ge=0)
    epochs: int = option(100, "adapter epochs", ge=1)
    lr: float = option(1e-3, "AdamW learning rate", gt=0.0)
    batch_size: int = option(32, "adapter batch", ge=1)
    paths: str = option("both", "GDPA paths: both, clip or depth", choices=["both", "clip", "depth"])


@dataclass
class SuiteConfig:
    run: RunConfig = field(default_factory=lambda: RunConfig(name="suite"))
    protocols: list[str] = option(["protocols/clip2point.yaml", "protocols/openshape.yaml"],
                                  "protocol YAML files (relative paths: to the suite file's folder)")
    roots: dict[str, str] = option({}, "reader name → root of its release on this machine; a reader without a root is skipped")
    published: str = option("published.yaml", "YAML of published numbers shown as reference rows (empty: none)")
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    fewshot: SuiteFewshot = field(default_factory=SuiteFewshot)

    def validate(self) -> None:
        if not self.protocols:
            raise ConfigError("protocols", self.protocols, "at least one protocol file")
        for k, v in self.roots.items():
            if k not in READERS or not isinstance(v, str):
                raise ConfigError(f"roots.{k}", v, f"a path (string) under a reader name of {READERS}")


@dataclass
class PublishedNumber:
    method: str = option("", "the method, as its paper names it")
    dataset: str = option("", "the table row it belongs to (modelnet40, scanobjectnn, objaverse_lvis)")
    protocol: str = option("", "the protocol column it was measured under (clip2point, openshape, ...)")
    metric: str = option("top1", "which metric", choices=list(METRICS))
    value: float = option(0.0, "the number as published, in %", ge=0.0, le=100.0)
    source: str = option("", "where it is published: paper, venue, table")
    note: str = option("", "what differs from the protocol, if anything")

    def validate(self) -> None:
        for key in ("method", "dataset", "protocol", "source"):
            if not getattr(self, key):
                raise ConfigError(f"numbers[].{key}", getattr(self, key), f"a non-empty {key} (every published number names its source)")


@dataclass
class PublishedNumbers:
    numbers: list[PublishedNumber] = option([], "published numbers, shown as reference rows beside the measured ones")

    def validate(self) -> None:
        for n in self.numbers:
            n.validate()
