"""The demo's settings set on the configs of the commands its stages run, all at load time.

:func:`load_demo` reads the demo config and builds, before any stage runs or any file is
written, every config a stage hands to a command: the two render jobs
(:class:`~c2p.config.render.RenderJobConfig`), the pre-training runs
(:class:`~c2p.config.pretrain.PretrainConfig`, from ``configs.pretrain``) and the zero-shot and
few-shot evaluations (:class:`~c2p.config.downstream.DownstreamConfig`, from
``configs.downstream``). Values are set on typed fields (:func:`replace_fields`), so a key that
one of those configs renamed raises :class:`ConfigError` here rather than in a subprocess minutes
later; each built config then goes through :func:`build_config` again, which checks every type
and bound and runs the cross-field rules. The stages pass each one as a resolved YAML file
(``<run>/configs/<name>.yaml``) with ``--config``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from c2p.config.core import ConfigError, build_config, load_config, to_dict, to_yaml
from c2p.config.demo import DemoConfig
from c2p.config.downstream import DownstreamConfig
from c2p.config.pretrain import PretrainConfig
from c2p.config.render import RenderJobConfig
from c2p.fileio import atomic_write_bytes
from c2p.train.export import DEPTH_TOWER_FILE, EXPORT_DIR

__all__ = [
    "BASELINE", "FULL", "ABLATION", "CLIP_PATH", "DEPTH_PATH", "GDPA", "FEWSHOT_PATHS", "RENDER_SPLITS",
    "DemoPaths", "DemoPlan", "load_demo", "plan_demo", "replace_fields",
]

T = TypeVar("T")

# Row labels of the results tables: the zero-shot encoders and the few-shot adapter paths.
BASELINE = "CLIP image tower (PointCLIP-style)"
FULL = "CLIP2Point depth tower"
ABLATION = "CLIP2Point w/o intra-modality term"
CLIP_PATH, DEPTH_PATH, GDPA = "CLIP path", "CLIP2Point path", "GDPA (both, gated)"
FEWSHOT_PATHS = {CLIP_PATH: "clip", DEPTH_PATH: "depth", GDPA: "both"}  # label → adapter.paths
RENDER_SPLITS = ("train", "test")
RENDER_PREVIEWS = 4  # objects in the train shards' previews/ contact sheets


@dataclass(frozen=True)
class DemoPaths:
    """Where each stage's outputs go inside the run directory ``dir`` (absolute)."""

    dir: Path

    @property
    def world(self) -> Path:
        return self.dir / "world"

    def shards(self, split: str) -> Path:
        return self.dir / "shards" / split

    @property
    def clip_weights(self) -> Path:
        return self.dir / "clip" / "clip.safetensors"

    def tower(self, run: str) -> Path:
        """The exported depth tower of pre-training run ``run``."""
        return self.dir / run / EXPORT_DIR / DEPTH_TOWER_FILE

    @property
    def eval(self) -> Path:
        return self.dir / "eval"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def configs(self) -> Path:
        return self.dir / "configs"

    @property
    def state(self) -> Path:
        return self.dir / "demo_state.json"


@dataclass
class DemoPlan:
    """A loaded demo: its config, its paths and every config its stages hand to a command.

    ``render``: split → job; ``pretrain``: run name (``c2p``, ``c2p_nointra``) → run;
    ``zeroshot``: table label → evaluation; ``fewshot``: table label → sweep.
    """

    cfg: DemoConfig
    paths: DemoPaths
    render: dict[str, RenderJobConfig]
    pretrain: dict[str, PretrainConfig]
    zeroshot: dict[str, DownstreamConfig]
    fewshot: dict[str, DownstreamConfig]

    def config_files(self) -> dict[Path, Any]:
        """Every resolved config with the file a stage passes it in."""
        files: dict[Path, Any] = {self.render_file(s): c for s, c in self.render.items()}
        files.update({self.pretrain_file(n): c for n, c in self.pretrain.items()})
        files.update({self.downstream_file(c): c for c in [*self.zeroshot.values(), *self.fewshot.values()]})
        return files

    def render_file(self, split: str) -> Path:
        return self.paths.configs / f"render_{split}.yaml"

    def pretrain_file(self, run: str) -> Path:
        return self.paths.configs / f"pretrain_{run}.yaml"

    def downstream_file(self, cfg: DownstreamConfig) -> Path:
        return self.paths.configs / f"{cfg.run.name}.yaml"

    def write_configs(self) -> None:
        """Write ``<run>/demo.yaml`` and every resolved config under ``<run>/configs/``."""
        self.paths.configs.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.paths.dir / "demo.yaml", to_yaml(self.cfg).encode())
        for path, cfg in self.config_files().items():
            atomic_write_bytes(path, to_yaml(cfg).encode())


def load_demo(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> DemoPlan:
    """Read the demo config ``path`` (YAML) with ``key=value`` overrides and build its plan.

    Relative ``configs.*`` paths are taken from the folder of ``path`` (the working directory
    without one). Raises :class:`ConfigError`; writes nothing.
    """
    cfg = load_config(DemoConfig, path, overrides)
    return plan_demo(cfg, Path(path).parent if path else Path.cwd())


def plan_demo(cfg: DemoConfig, config_dir: str | Path) -> DemoPlan:
    """Every stage's config built from ``cfg`` and validated; ``config_dir`` anchors relative
    ``configs.*`` paths. Raises :class:`ConfigError`; writes nothing."""
    paths = DemoPaths((Path(cfg.run.dir) / cfg.run.name).absolute())
    # The base files name no shards and no corpus root, which their validation asks for: given
    # here as JSON (valid YAML whatever characters the path holds), then set again below.
    pretrain_base = load_config(PretrainConfig, _stage_config(config_dir, "configs.pretrain", cfg.configs.pretrain),
                                [f"data.shards={json.dumps([str(paths.shards('train'))])}"])
    downstream_base = load_config(DownstreamConfig, _stage_config(config_dir, "configs.downstream", cfg.configs.downstream),
                                  [f"data.root={json.dumps(str(paths.world))}"])
    runs = {"c2p": True, "c2p_nointra": False} if cfg.pretrain.ablation else {"c2p": True}
    pretrain = {name: pretrain_config(pretrain_base, cfg, paths, name, intra=intra) for name, intra in runs.items()}
    accum = pretrain["c2p"].train.grad_accum  # what the pre-training command checks, known here before any stage runs
    if cfg.pretrain.batch_size % (cfg.pretrain.ranks * accum):
        raise ConfigError("pretrain.batch_size", cfg.pretrain.batch_size,
                          f"a multiple of pretrain.ranks x train.grad_accum = {cfg.pretrain.ranks} x {accum} = {cfg.pretrain.ranks * accum}")
    towers = {BASELINE: None, FULL: "c2p", ABLATION: "c2p_nointra"}
    zeroshot = {label: zeroshot_config(downstream_base, cfg, paths, run) for label, run in towers.items() if run in (None, *runs)}
    fewshot = {label: fewshot_config(downstream_base, cfg, paths, adapter) for label, adapter in FEWSHOT_PATHS.items()}
    render = {split: render_config(cfg, paths, split) for split in RENDER_SPLITS}
    return DemoPlan(cfg, paths, render, pretrain, zeroshot, fewshot)


def _stage_config(config_dir: str | Path, key: str, value: str) -> Path:
    path = Path(config_dir) / Path(value).expanduser()  # an absolute value replaces config_dir
    if not path.is_file():
        raise ConfigError(key, value, f"an existing YAML file (relative paths: from {config_dir})")
    return path


def replace_fields(section: T, key: str, **values: Any) -> T:
    """``dataclasses.replace(section, **values)`` for config section ``key`` (dotted, "" at
    the top), raising :class:`ConfigError` for a field the section does not have."""
    names = [f.name for f in dataclasses.fields(section)]  # type: ignore[arg-type]
    for name, value in values.items():
        if name not in names:
            dotted = f"{key}.{name}" if key else name
            raise ConfigError(dotted, value, f"a field of {type(section).__name__}: {', '.join(names)}")
    return dataclasses.replace(section, **values)  # type: ignore[type-var]


def _checked(cfg: T, source: str) -> T:
    """``cfg`` rebuilt from its dict: what ``replace`` let through (types, bounds, cross-field
    rules) is checked as if the config had been read from a file."""
    return build_config(type(cfg), to_dict(cfg), source=source)


def render_config(cfg: DemoConfig, paths: DemoPaths, split: str) -> RenderJobConfig:
    """The render job of ``split``: the world's objects → ``<run>/shards/<split>``."""
    w, base = cfg.world, RenderJobConfig()
    job = replace_fields(
        base, "",
        corpus=replace_fields(base.corpus, "corpus", name="synthetic", root=str(paths.world), split=split),
        out=str(paths.shards(split)),
        views=replace_fields(base.views, "views", image_size=w.image_size),
        job=replace_fields(base.job, "job", shard_size=w.shard_size, points=w.points, seed=cfg.run.seed, previews=RENDER_PREVIEWS),
    )
    return _checked(job, f"render config of the demo's {split} split")


def pretrain_config(base: PretrainConfig, cfg: DemoConfig, paths: DemoPaths, name: str, *, intra: bool) -> PretrainConfig:
    """Pre-training run ``name`` from the small CLIP: ``base`` with the demo's sizes and steps;
    ``intra=False`` is the paper's ablation without the intra-modality term."""
    p, w = cfg.pretrain, cfg.world
    run = replace_fields(
        base, "",
        run=replace_fields(base.run, "run", dir=str(paths.dir), name=name, seed=cfg.run.seed),
        data=replace_fields(base.data, "data", shards=[str(paths.shards("train"))], points=p.loaded_points, image_size=w.image_size),
        depth=replace_fields(base.depth, "depth", point_keep=p.point_keep, image_size=w.image_size, radius=w.depth_radius),
        model=replace_fields(base.model, "model", name=cfg.clip.model, pretrained=str(paths.clip_weights)),
        train=replace_fields(base.train, "train", steps=p.steps, batch_size=p.batch_size, zero_stage=p.zero_stage),
        optim=replace_fields(base.optim, "optim", lr=p.lr),
        loss=replace_fields(base.loss, "loss", intra=intra),
    )
    return _checked(run, f"{cfg.configs.pretrain} with the demo's values")


def _downstream(base: DownstreamConfig, cfg: DemoConfig, paths: DemoPaths, name: str, tower: Path | None) -> DownstreamConfig:
    """What zero-shot and few-shot share: the world's held-out split, the small CLIP, the
    demo's depth maps, one feature cache; ``tower``: a depth tower (None: CLIP's image tower)."""
    w = cfg.world
    encoder = replace_fields(base.encoder, "encoder", model=cfg.clip.model, pretrained=str(paths.clip_weights), image_size=w.image_size,
                             views=cfg.fewshot.views, radius=w.depth_radius, cache_dir=str(paths.eval / "cache"))
    if tower is not None:
        encoder = replace_fields(encoder, "encoder", depth_tower=str(tower))
    return replace_fields(
        base, "",
        run=replace_fields(base.run, "run", dir=str(paths.eval), name=name, seed=cfg.run.seed),
        data=replace_fields(base.data, "data", root=str(paths.world)),
        encoder=encoder,
    )


def zeroshot_config(base: DownstreamConfig, cfg: DemoConfig, paths: DemoPaths, run: str | None) -> DownstreamConfig:
    """Zero-shot with pre-training run ``run``'s depth tower (None: CLIP's image tower, the
    PointCLIP-style baseline); reports in ``<run>/eval/zeroshot_<run or clip>/``."""
    ev = _downstream(base, cfg, paths, f"zeroshot_{run or 'clip'}", paths.tower(run) if run else None)
    return _checked(ev, f"{cfg.configs.downstream} with the demo's values")


def fewshot_config(base: DownstreamConfig, cfg: DemoConfig, paths: DemoPaths, adapter: str) -> DownstreamConfig:
    """The K x seed sweep of GDPA with ``adapter.paths=adapter`` on the full run's depth tower."""
    f = cfg.fewshot
    ev = _downstream(base, cfg, paths, f"fewshot_{adapter}", paths.tower("c2p"))
    ev = replace_fields(
        ev, "",
        adapter=replace_fields(ev.adapter, "adapter", paths=adapter),
        finetune=replace_fields(ev.finetune, "finetune", epochs=f.epochs, shots=list(f.shots), seeds=list(f.seeds)),
    )
    return _checked(ev, f"{cfg.configs.downstream} with the demo's values")
