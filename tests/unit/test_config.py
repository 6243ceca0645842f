"""Typed config machinery: YAML + overrides → validated dataclasses, errors that name the key."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from c2p.config import (
    ConfigError,
    config_diff,
    config_hash,
    describe,
    load_config,
    parse_overrides,
    to_yaml,
)
from c2p.config.downstream import DownstreamConfig
from c2p.config.pretrain import PretrainConfig
from c2p.config.render import RenderJobConfig

REPO = Path(__file__).resolve().parents[2]


def test_overrides_parse_yaml_scalars_and_lists():
    got = parse_overrides(["train.steps=20", "optim.lr=1e-3", "data.shards=[a,b]", "run.name=x", "loss.intra=false"])
    assert got == {"train": {"steps": 20}, "optim": {"lr": 1e-3}, "data": {"shards": ["a", "b"]}, "run": {"name": "x"}, "loss": {"intra": False}}


def test_yaml_file_base_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  steps: 7\n  zero_stage: 1\ndata:\n  shards: [s]\n")
    (tmp_path / "top.yaml").write_text("_base_: base.yaml\ntrain:\n  steps: 9\n")
    cfg = load_config(PretrainConfig, tmp_path / "top.yaml", ["optim.lr=0.5"])
    assert (cfg.train.steps, cfg.train.zero_stage, cfg.optim.lr, cfg.data.shards) == (9, 1, 0.5, ["s"])
    assert isinstance(cfg.optim.lr, float)


@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("train.zero_stage=4", "train.zero_stage", "one of 0, 1, 2, 3"),
        ("train.steps=-3", "train.steps", ">= 1"),
        ("train.steps=ten", "train.steps", "an integer"),
        ("optim.name=sgd", "optim.name", "'lamb', 'adamw'"),
        ("train.stepz=3", "train.stepz", "did you mean 'train.steps'"),
        ("nope.x=1", "nope", "a known key of PretrainConfig"),
        ("data.weights=[1,2]", "data.weights", "one weight per entry"),
        ("loss.intra=maybe", "loss.intra", "true or false"),
    ],
)
def test_bad_values_name_key_value_and_expectation(override, key, expected):
    with pytest.raises(ConfigError) as e:
        load_config(PretrainConfig, None, ["data.shards=[s]", override])
    assert e.value.key == key
    assert key in str(e.value) and expected in str(e.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="an existing YAML file"):
        load_config(PretrainConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="valid YAML"):
        load_config(PretrainConfig, bad)


def test_every_field_is_documented():
    for cls in (PretrainConfig, RenderJobConfig, DownstreamConfig):
        for key, _type, _default, doc in describe(cls):
            assert doc, f"{cls.__name__}.{key} has no doc"


def test_hash_and_diff():
    a = load_config(PretrainConfig, None, ["data.shards=[s]"])
    b = dataclasses.replace(a, train=dataclasses.replace(a.train, steps=a.train.steps + 1))
    assert config_hash(a) != config_hash(b)
    assert config_hash(a, exclude=["train.steps"]) == config_hash(b, exclude=["train.steps"])
    assert config_diff(dataclasses.asdict(a), dataclasses.asdict(b)) == [("train.steps", a.train.steps, a.train.steps + 1)]
    assert "steps:" in to_yaml(a)


def test_shipped_configs_load():
    """Every YAML under configs/ loads into the config class of its folder."""
    classes = {"pretrain": PretrainConfig, "render": RenderJobConfig, "downstream": DownstreamConfig}
    found = 0
    for folder, cls in classes.items():
        for path in sorted((REPO / "configs" / folder).glob("*.yaml")):
            overrides = {"render": ["out=/tmp/x", "corpus.root=/tmp/y"], "downstream": ["data.root=/tmp/y"]}.get(folder, [])
            load_config(cls, path, overrides)
            found += 1
    assert found >= 1


@pytest.mark.parametrize("override", ["optim.lr=.inf", "optim.lr=-.inf", "depth.radius=.nan", "loss.temperature=.nan"])
def test_non_finite_numbers_are_refused_naming_the_key(override):
    from c2p.config.pretrain import PretrainConfig

    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"config key '{re.escape(key)}'.*expected a finite number"):
        load_config(PretrainConfig, None, [override])
