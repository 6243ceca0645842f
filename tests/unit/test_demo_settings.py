"""The demo's settings: the configs it hands its commands are built at load time and equal what
the former ``key=value`` overrides produced; each stage passes them as resolved files to
``python -m c2p.cli.<name>``; bad configs are refused at load.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from testdata import DEMO_SHORT

from c2p.config.core import ConfigError, load_config, to_dict
from c2p.config.demo import DemoConfig
from c2p.config.downstream import DownstreamConfig
from c2p.config.pretrain import PretrainConfig
from c2p.config.render import RenderJobConfig
from c2p.demo import load_demo, plan_demo
from c2p.demo.settings import ABLATION, BASELINE, FULL, replace_fields
from c2p.demo.stages import (
    DemoRun,
    stage_fewshot,
    stage_pretrain,
    stage_render,
    stage_zeroshot,
)

REPO = Path(__file__).resolve().parents[2]
DEMO_YAML = REPO / "configs" / "demo" / "demo.yaml"

SHORT = DEMO_SHORT


# ----------------------------------------------------------------------------- configs


def _former_overrides(cfg: DemoConfig) -> dict[str, tuple[type, Path | None, list[str]]]:
    """What launch/demo.py passed its commands before its configs were typed, string for string:
    config file → (class, --config, the flags turned into overrides + the overrides)."""
    d = (Path(cfg.run.dir) / cfg.run.name).absolute()
    w, p, f, seed = cfg.world, cfg.pretrain, cfg.fewshot, cfg.run.seed
    out: dict[str, tuple[type, Path | None, list[str]]] = {}
    for split in ("train", "test"):
        out[f"render_{split}"] = (RenderJobConfig, None, [
            "corpus.name=synthetic", f"corpus.root={d / 'world'}", f"out={d / 'shards' / split}", f"corpus.split={split}",
            f"views.image_size={w.image_size}", f"job.shard_size={w.shard_size}", f"job.points={w.points}", f"job.seed={seed}", "job.previews=4"])
    for name, intra in (("c2p", True), ("c2p_nointra", False)):
        out[f"pretrain_{name}"] = (PretrainConfig, REPO / "configs" / "demo" / "pretrain.yaml", [
            f"run.dir={d}", f"run.name={name}", f"run.seed={seed}",
            f"data.shards=[{d / 'shards' / 'train'}]", f"data.points={p.loaded_points}", f"depth.point_keep={p.point_keep}", f"data.image_size={w.image_size}",
            f"depth.image_size={w.image_size}", f"depth.radius={w.depth_radius}", f"model.name={cfg.clip.model}", f"model.pretrained={d / 'clip' / 'clip.safetensors'}",
            f"train.steps={p.steps}", f"train.batch_size={p.batch_size}", f"train.zero_stage={p.zero_stage}",
            f"optim.lr={p.lr}", f"loss.intra={str(intra).lower()}"])
    shared = [f"run.dir={d / 'eval'}", f"encoder.model={cfg.clip.model}", f"encoder.pretrained={d / 'clip' / 'clip.safetensors'}",
              f"encoder.image_size={w.image_size}", f"encoder.views={f.views}", f"encoder.radius={w.depth_radius}",
              f"encoder.cache_dir={d / 'eval' / 'cache'}", f"run.seed={seed}"]
    downstream = REPO / "configs" / "demo" / "downstream.yaml"
    for run in (None, "c2p", "c2p_nointra"):
        tower = [f"encoder.depth_tower={d / run / 'export' / 'depth_tower.safetensors'}"] if run else []
        out[f"zeroshot_{run or 'clip'}"] = (DownstreamConfig, downstream, [f"data.root={d / 'world'}", *tower, f"run.name=zeroshot_{run or 'clip'}", *shared])
    for paths in ("clip", "depth", "both"):
        out[f"fewshot_{paths}"] = (DownstreamConfig, downstream, [
            f"data.root={d / 'world'}", f"encoder.depth_tower={d / 'c2p' / 'export' / 'depth_tower.safetensors'}", f"run.name=fewshot_{paths}",
            f"finetune.shots=[{','.join(map(str, f.shots))}]", f"finetune.seeds=[{','.join(map(str, f.seeds))}]",
            *shared, f"adapter.paths={paths}", f"finetune.epochs={f.epochs}"])
    return out


@pytest.mark.parametrize("overrides", [[], SHORT, ["pretrain.point_keep=1.0", "run.seed=3", "fewshot.views=6"]], ids=["default", "short", "other"])
def test_resolved_configs_equal_the_former_overrides(tmp_path, overrides):
    plan = load_demo(DEMO_YAML, [f"run.dir={tmp_path / 'runs'}", *overrides])
    built = {path.stem: cfg for path, cfg in plan.config_files().items()}
    former = _former_overrides(plan.cfg)
    assert set(built) == set(former)
    for stem, (cls, config, strings) in former.items():
        assert to_dict(built[stem]) == to_dict(load_config(cls, config, strings)), stem
    assert not (tmp_path / "runs").exists()  # loading writes nothing

    # the files the commands get hold the same configs
    plan.write_configs()
    for path, cfg in plan.config_files().items():
        assert load_config(type(cfg), path) == cfg, path.name
    assert load_config(DemoConfig, plan.paths.dir / "demo.yaml") == plan.cfg


def test_without_the_ablation_there_is_one_pretraining_run(tmp_path):
    plan = load_demo(DEMO_YAML, [f"run.dir={tmp_path}", "pretrain.ablation=false"])
    assert list(plan.pretrain) == ["c2p"] and list(plan.zeroshot) == [BASELINE, FULL]


def test_a_renamed_key_fails_at_load():
    train = PretrainConfig().train
    with pytest.raises(ConfigError, match=r"'train\.step'.*a field of TrainConfig"):
        replace_fields(train, "train", step=5)
    cfg = DemoConfig()
    cfg.pretrain.steps = "400"  # a wrong type set past load_config still stops at the built config
    with pytest.raises(ConfigError, match=r"'train\.steps'.*an integer"):
        plan_demo(cfg, DEMO_YAML.parent)


def test_load_refuses_what_a_stage_would_refuse_later(tmp_path):
    with pytest.raises(ConfigError, match=r"'pretrain\.batch_size'.*2 x 1"):
        load_demo(DEMO_YAML, [f"run.dir={tmp_path}", "pretrain.batch_size=63"])
    with pytest.raises(ConfigError, match=r"'configs\.pretrain'.*existing YAML file"):
        load_demo(DEMO_YAML, [f"run.dir={tmp_path}", "configs.pretrain=missing.yaml"])
    assert not list(tmp_path.iterdir())


class _Recorder(DemoRun):
    """Stages with their commands recorded instead of run; canned JSON summaries."""

    def __init__(self, plan):
        super().__init__(plan)
        self.cmds: list[list[str]] = []

    def sh(self, stage, cmd, label):
        self.cmds.append([str(c) for c in cmd])
        if stage == "zeroshot":
            return json.dumps({"metrics": {"top1": 0.5}})
        if stage == "fewshot":
            return json.dumps({"rows": [{"shots": k, "top1_mean": 0.5, "top1_std": 0.1} for k in self.cfg.fewshot.shots], "report": {"plot": "p.png"}})
        return ""


def test_stages_run_the_package_commands_on_the_resolved_files(tmp_path):
    plan = load_demo(DEMO_YAML, [f"run.dir={tmp_path}"])
    plan.write_configs()
    d = _Recorder(plan)
    for stage in (stage_render, stage_pretrain, stage_zeroshot, stage_fewshot):
        stage(d)
    modules = [c[2] for c in d.cmds]
    assert modules == ["c2p.cli.render"] * 2 + ["c2p.cli.pretrain"] * 2 + ["c2p.cli.evaluate"] * 3 + ["c2p.cli.finetune"] * 3
    assert all(c[:2] == [sys.executable, "-m"] for c in d.cmds)
    files = plan.config_files()
    for c in d.cmds:  # each passes one resolved file and no key=value string
        path = Path(c[c.index("--config") + 1])
        assert path in files and not [a for a in c if "=" in a]
    assert d.cmds[2][-4:] == ["--cluster", "local", "--tasks-per-node", "2"]
    assert set(d.results["zeroshot"]) == {BASELINE, FULL, ABLATION}


# ----------------------------------------------------------------------------- end to end


