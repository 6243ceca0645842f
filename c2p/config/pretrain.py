"""Config of a CLIP2Point pre-training run (``configs/pretrain/*.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from c2p.config.core import ConfigError, option


@dataclass
class RunConfig:
    name: str = option("tiny", "run name: outputs go to <dir>/<name>/")
    dir: str = option("runs", "parent directory of run directories")
    seed: int = option(0, "run seed: model init, data stream, augmentation", ge=0)

    def validate(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError("run.name", self.name, "a non-empty name without '/' and not starting with '.'")


@dataclass
class DataConfig:
    shards: list[str] = option([], "shard directories (with index.json) or brace patterns of .tar files, one per corpus")
    weights: list[float] = option([], "mixing weight per entry of shards (empty: equal)", ge=0.0)
    points: int = option(1024, "points subsampled per object per step (of the stored P)", ge=1)
    resampled: bool = option(True, "draw shards with replacement (long runs) instead of finite split passes")
    shuffle_buffer: int = option(1000, "samples held in the streaming shuffle buffer (0: off)", ge=0)
    workers: int = option(2, "DataLoader worker processes per rank", ge=0)
    imgfeat_tag: str = option("", "read precomputed imgfeat.<tag>.npy instead of decoding RGB (empty: decode images)")
    image_size: int = option(224, "RGB size fed to the frozen image tower", ge=8)
    cache_dir: str = option("", "local copies of s3:// shards for later epochs (empty: stream every time)")
    cache_max_gb: float = option(100.0, "size bound of data.cache_dir: least recently read copies go first", gt=0.0)

    def validate(self) -> None:
        if self.weights and len(self.weights) != len(self.shards):
            raise ConfigError("data.weights", self.weights, f"one weight per entry of data.shards ({len(self.shards)})")


@dataclass
class ModelConfig:
    name: str = option("ViT-B-32", "open_clip model name (tiny CPU-sized configs: c2p-tiny, c2p-small)")
    pretrained: str = option("", "local path of CLIP weights (.pt/.bin/.safetensors); empty: random init")
    grad_checkpointing: bool = option(False, "activation checkpointing in the depth tower")


@dataclass
class DepthConfig:
    image_size: int = option(224, "depth map size in pixels", ge=8)
    radius: float = option(0.02, "point radius in NDC units", gt=0.0)
    dist: float = option(1.0, "camera distance of the RGB views", gt=0.0)
    dist_jitter: float = option(0.1, "augmented depth distance d*(1+U(-j, j))", ge=0.0, le=0.9)
    point_keep: float = option(1.0, "fraction of the points each depth image of the pair renders, drawn independently (1: the original, both from the same points)", gt=0.0, le=1.0)
    angle_jitter: float = option(0.0, "U(-j, j) degrees added to each depth image's elevation and azimuth (0: the original)", ge=0.0, le=45.0)


@dataclass
class LossConfig:
    temperature: float = option(0.07, "NT-Xent temperature tau", gt=0.0)
    intra: bool = option(True, "add the intra-modality term NTX(F_d1, F_d2) (False: the paper's ablation)")
    global_negatives: bool = option(False, "all-gather features across ranks for negatives (original: per rank)")


@dataclass
class OptimConfig:
    name: str = option("lamb", "optimizer", choices=["lamb", "adamw"])
    lr: float = option(6e-3, "peak learning rate", gt=0.0)
    weight_decay: float = option(1e-4, "decoupled weight decay", ge=0.0)
    betas: list[float] = option([0.9, 0.999], "Adam/LAMB betas", ge=0.0, le=1.0)
    eps: float = option(1e-6, "Adam/LAMB epsilon", gt=0.0)
    grad_clip: float = option(1.0, "gradient norm clip (0: off)", ge=0.0)

    def validate(self) -> None:
        if len(self.betas) != 2:
            raise ConfigError("optim.betas", self.betas, "two numbers in [0, 1]")


@dataclass
class ScheduleConfig:
    name: str = option("cosine_restarts", "lr schedule", choices=["cosine_restarts", "warmup_cosine", "constant"])
    restart_epochs: float = option(2.0, "cosine_restarts: period in epochs (the original: 2)", gt=0.0)
    eta_min: float = option(1e-5, "minimum learning rate", ge=0.0)
    warmup_steps: int = option(0, "linear warmup steps", ge=0)


@dataclass
class TrainConfig:
    steps: int = option(100, "optimizer steps to train", ge=1)
    batch_size: int = option(256, "global batch (objects per optimizer step, all ranks)", ge=1)
    grad_accum: int = option(1, "micro-batches per optimizer step", ge=1)
    zero_stage: int = option(2, "DeepSpeed ZeRO stage", choices=[0, 1, 2, 3])
    precision: str = option("auto", "auto: bf16 on GPU, fp32 on CPU", choices=["auto", "fp32", "bf16"])
    backend: str = option("auto", "auto: nccl on GPU, gloo on CPU", choices=["auto", "nccl", "gloo"])
    epoch_samples: int = option(0, "samples per epoch for the schedule (0: from index.json)", ge=0)
    log_every: int = option(10, "steps between metric lines", ge=1)
    deterministic: bool = option(False, "deterministic algorithms: a resumed run repeats the uninterrupted one bit for bit (slower)")
    watchdog_s: float = option(900.0, "seconds a rank may go without finishing an optimizer step (a checkpoint save included) before it ends the job naming the stalled rank, exit 75 (0: off)", ge=0.0)
    watchdog_requeues: int = option(2, "times a SLURM job whose watchdog fired asks SLURM to requeue it (counted by SLURM_RESTART_COUNT, preemptions included); it resumes from the last committed checkpoint (0: the job fails)", ge=0)
    collective_timeout_s: float = option(0.0, "timeout of one collective of the default process group in seconds (0: 2 x train.watchdog_s, or 1800 with the watchdog off)", ge=0.0)
    peak_tflops: float = option(0.0, "peak TFLOP/s per rank that MFU is taken against (0: measured at start, a matmul in the run's precision)", ge=0.0)

    nonfinite: str = option("stop", "a NaN/inf loss term: stop the run before the step is committed, or skip the batch "
                            "(no backward, no optimizer step; the next batch takes its place)", choices=["stop", "skip"])
    nonfinite_max_skips: int = option(10, "train.nonfinite=skip: batches skipped per job before the run stops anyway", ge=0)
    def validate(self) -> None:
        if 0 < self.watchdog_s < 1:
            raise ConfigError("train.watchdog_s", self.watchdog_s, "0 (off) or at least 1 second")
        if self.collective_timeout_s and self.collective_timeout_s <= self.watchdog_s:
            # the collective's own error names neither the stalled rank nor the step: the watchdog must fire first
            raise ConfigError("train.collective_timeout_s", self.collective_timeout_s,
                              f"0 (derived) or more than train.watchdog_s = {self.watchdog_s}")


@dataclass
class CheckpointConfig:
    every: int = option(500, "steps between checkpoints (a final one is always saved)", ge=1)
    keep: int = option(3, "committed checkpoints kept (older ones deleted)", ge=1)
    resume: str = option("auto", "auto (newest committed tag in the run), none, or a tag path")
    export: bool = option(True, "write export/depth_tower.safetensors at the end")
    remote: str = option("", "s3://bucket/prefix: every committed tag is uploaded there (marker last, then latest; keep-K "
                             "too) with the final export under export/, and a run directory without a committed tag "
                             "resumes from it (empty: local only)")

    def validate(self) -> None:
        if self.remote:
            from c2p.train.remoteckpt import check_remote

            try:
                check_remote(self.remote)
            except ValueError as e:
                raise ConfigError("checkpoint.remote", self.remote, "empty or an s3://bucket/prefix address") from e


@dataclass
class PretrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def validate(self) -> None:
        if not self.data.shards:
            raise ConfigError("data.shards", self.data.shards, "at least one shard directory or pattern")
