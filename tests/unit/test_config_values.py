"""Values refused at validation, whatever config they are in: non-finite numbers in every float
field, unknown splits; and the error says where the value came from (file or command line)."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Union, get_args, get_origin

import pytest

from c2p.config import ConfigError, load_config
from c2p.config.demo import DemoConfig
from c2p.config.downstream import DownstreamConfig
from c2p.config.pretrain import PretrainConfig
from c2p.config.render import RenderJobConfig

REPO = Path(__file__).resolve().parents[2]
CONFIGS = (PretrainConfig, RenderJobConfig, DownstreamConfig, DemoConfig)


def _float_fields(cls: type, prefix: str = "") -> list[tuple[str, bool]]:
    """(dotted key, is a list) of every field whose annotation admits a float, in any config tree."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, tp = f"{prefix}{f.name}", hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += _float_fields(tp, key + ".")
            continue
        origin = get_origin(tp)
        members = get_args(tp) if origin in (Union, types.UnionType) else (tp,)
        if float in members:
            out.append((key, False))
        elif origin is list and get_args(tp) and get_args(tp)[0] is float:
            out.append((key, True))
    return out


FLOAT_FIELDS = [(cls.__name__, key, is_list) for cls in CONFIGS for key, is_list in _float_fields(cls)]


def test_the_enumeration_finds_the_float_fields():
    keys = {(c, k) for c, k, _ in FLOAT_FIELDS}
    assert {("PretrainConfig", "depth.radius"), ("PretrainConfig", "optim.lr"), ("PretrainConfig", "optim.betas"),
            ("RenderJobConfig", "job.num_cpus"), ("DownstreamConfig", "encoder.radius"), ("DemoConfig", "world.depth_radius")} <= keys
    assert len(FLOAT_FIELDS) >= 29  # as of this test; new float keys are enumerated too


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
@pytest.mark.parametrize("cls_name, key, is_list", FLOAT_FIELDS)
def test_every_float_field_refuses_non_finite_values(cls_name, key, is_list, value):
    cls = {c.__name__: c for c in CONFIGS}[cls_name]
    with pytest.raises(ConfigError) as e:
        load_config(cls, None, [f"{key}=[0.5, {value}]" if is_list else f"{key}={value}"])
    assert e.value.key == (f"{key}[1]" if is_list else key) and e.value.expected == "a finite number"
    assert "(on the command line)" in str(e.value)


def test_non_finite_values_in_a_file_are_refused_naming_the_file(tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text((REPO / "configs" / "pretrain" / "tiny.yaml").read_text().replace("radius: 0.04", "radius: .nan"))
    with pytest.raises(ConfigError, match=rf"config key 'depth.radius' \(in {cfg}\): got nan; expected a finite number"):
        load_config(PretrainConfig, cfg)


def test_errors_name_the_command_line_for_overrides_and_the_file_for_its_own_values(tmp_path):
    tiny = REPO / "configs" / "pretrain" / "tiny.yaml"
    with pytest.raises(ConfigError, match=r"config key 'train.stepz' \(on the command line\)"):
        load_config(PretrainConfig, tiny, ["train.stepz=3"])
    with pytest.raises(ConfigError, match=r"config key 'train' \(on the command line\)"):
        load_config(PretrainConfig, tiny, ["train"])  # not key=value
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"_base_: {tiny}\ntrain:\n  steps: 0\n")
    with pytest.raises(ConfigError, match=rf"config key 'train.steps' \(in {bad}\)"):
        load_config(PretrainConfig, bad, ["train.batch_size=8"])
    with pytest.raises(ConfigError) as e:  # a default refused by a cross-field rule: no source to name
        load_config(PretrainConfig, None, [])
    assert e.value.key == "data.shards" and e.value.source is None


def test_evaluation_splits_are_the_corpus_readers_splits():
    from c2p.corpora.base import SPLITS

    for key in ("data.test_split", "data.train_split"):
        with pytest.raises(ConfigError, match=rf"config key '{key}' \(on the command line\): got 'val'; expected one of 'train', 'test', 'all'"):
            load_config(DownstreamConfig, None, ["data.root=/r", f"{key}=val"])
    fields = {f.name: f for f in dataclasses.fields(typing.get_type_hints(DownstreamConfig)["data"])}
    assert fields["test_split"].metadata["choices"] == fields["train_split"].metadata["choices"] == SPLITS
