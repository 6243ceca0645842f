"""Launcher-side refusals (c2p.preflight): every input a job would read is checked before the run
directory, config.yaml, plan.json or a job exists; the refusal is exit 2 naming key, value and
what was expected. The pre-training cases go through the command itself (``c2p.cli.pretrain.main``)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from testdata import object_sample, unit_sphere_points, write_shard_dir

from c2p.cli import pretrain
from c2p.config import ConfigError, load_config
from c2p.config.downstream import EncoderConfig
from c2p.config.render import RenderJobConfig
from c2p.preflight import check_encoder, check_model, check_output_dir, check_render, check_weights, weights_format

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "pretrain" / "tiny.yaml"


class _RunsCode:
    """Unpickling this runs ``touch <marker>``: what a weights file must never be able to do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Weights files good and bad, and shard directories good and bad."""
    from c2p.models.clip import create_clip

    d = tmp_path_factory.mktemp("preflight")
    torch.manual_seed(0)
    out = {"tiny": d / "tiny.pt", "small": d / "small.pt", "text": d / "text.pt", "etext": d / "e.pt",
           "trunc": d / "trunc.pt", "code": d / "code.pt", "marker": d / "CODE_RAN"}
    torch.save(create_clip("c2p-tiny").state_dict(), out["tiny"])
    torch.save(create_clip("c2p-small").state_dict(), out["small"])
    out["text"].write_text("these are not weights\n")
    out["etext"].write_text("example text that torch's legacy loader reads as pickle opcode 101\n")
    whole = out["tiny"].read_bytes()
    out["trunc"].write_bytes(whole[: len(whole) // 2])
    torch.save({"state_dict": _RunsCode(out["marker"])}, out["code"])

    rng = __import__("numpy").random.default_rng(0)
    shards = [[object_sample("blobs", f"o{i}", "c0", 0, unit_sphere_points(rng, 64), views=[[0.0, 0.0, 1.0]],
                             imgfeat={"tiny": rng.standard_normal((1, 64))}) for i in range(s, 8, 2)] for s in range(2)]
    out["shards"] = write_shard_dir(d / "blobs", shards, corpus="blobs", labels=["c0"])
    out["one"] = write_shard_dir(d / "one", shards[:1], corpus="blobs", labels=["c0"])
    for name, edit in {"notjson": "{not json", "badtype": {"shards": ["shard-000000.tar"]}, "nocorpus": {"corpus": None}}.items():
        bad = shutil.copytree(out["shards"], d / name)
        if isinstance(edit, str):
            (bad / "index.json").write_text(edit)
        else:
            index = json.loads((bad / "index.json").read_text())
            index.update({k: v for k, v in edit.items() if v is not None})
            for k in (k for k, v in edit.items() if v is None):
                del index[k]
            (bad / "index.json").write_text(json.dumps(index))
    missing = shutil.copytree(out["shards"], d / "missingtar")
    (missing / "shard-000001.tar").unlink()
    out.update({k: d / k for k in ("notjson", "badtype", "nocorpus", "missingtar")})
    return out


def _pretrain(files, tmp_path, capsys, *overrides: str, shards: Path | None = None) -> tuple[int, str]:
    argv = ["--config", str(TINY), "--cluster", "local", "--tasks-per-node", "1", "data.imgfeat_tag=tiny",
            f"data.shards=['{shards or files['shards']}']", f"run.dir={tmp_path / 'runs'}", "run.name=r", "train.batch_size=8", *overrides]
    rc = pretrain.main(argv)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("case, override, key, says", [
    ("text", "model.pretrained={text}", "model.pretrained", "starts with b'these are not we'"),
    ("e-text", "model.pretrained={etext}", "model.pretrained", "a torch.save or safetensors weights file"),
    ("truncated", "model.pretrained={trunc}", "model.pretrained", "cut short"),
    ("other size", "model.pretrained={small}", "model.pretrained", "shape mismatch"),
    ("code", "model.pretrained={code}", "model.pretrained", "refused to run code from the file"),
    ("missing", "model.pretrained={tiny}x", "model.pretrained", "an existing local weights file"),
    ("model name", "model.name=c2p-tinny", "model.name", "an open_clip architecture name"),
    ("depth size", "depth.image_size=64", "depth.image_size", "the input size of c2p-tiny (32)"),
    ("rgb size", "data.imgfeat_tag=", "data.image_size", None),
    ("resume", "checkpoint.resume={tiny}_nowhere/step_00000010", "checkpoint.resume", "does not exist"),
])
def test_pretrain_refuses_before_the_run_directory_exists(files, tmp_path, capsys, case, override, key, says):
    extra = ["data.image_size=24"] if key == "data.image_size" else []
    rc, err = _pretrain(files, tmp_path, capsys, override.format(**{k: str(v) for k, v in files.items()}), *extra)
    assert rc == 2, err
    assert err.startswith(f"error: config key '{key}'") and (says is None or says in err), err
    assert not (tmp_path / "runs").exists()
    assert not files["marker"].exists()  # the crafted file ran nothing


@pytest.mark.parametrize("entry, says", [
    ("notjson", "is not JSON"),
    ("badtype", "shards is ['shard-000000.tar']; expected an object of tar name -> sample count"),
    ("nocorpus", "has no 'corpus'"),
    ("missingtar", "shard-000001.tar of data.shards entry"),
])
def test_pretrain_refuses_a_bad_shard_index_before_the_run_directory_exists(files, tmp_path, capsys, entry, says):
    rc, err = _pretrain(files, tmp_path, capsys, shards=files[entry])
    assert rc == 2 and err.startswith("error: config key 'data.shards[0]'") and says in err, err
    assert str(files[entry]) in err and not (tmp_path / "runs").exists()


def test_pretrain_refuses_a_resume_tag_that_was_never_committed(files, tmp_path, capsys):
    tag = tmp_path / "elsewhere" / "step_00000010"
    tag.mkdir(parents=True)
    rc, err = _pretrain(files, tmp_path, capsys, f"checkpoint.resume={tag}")
    assert rc == 2 and "config key 'checkpoint.resume'" in err and "the save never finished" in err, err
    assert not (tmp_path / "runs").exists()


def test_pretrain_refuses_too_few_shards_for_finite_passes(files, tmp_path, capsys):
    rc, err = _pretrain(files, tmp_path, capsys, "data.resampled=false", "data.workers=2", shards=files["one"])
    assert rc == 2 and "config key 'data.resampled'" in err and "1 x 2 = 2 shards per corpus" in err, err
    assert not (tmp_path / "runs").exists()


def test_pretrain_refuses_a_pattern_without_counts_unless_the_epoch_is_given(files, tmp_path, capsys):
    bare = shutil.copytree(files["shards"], tmp_path / "bare")
    (bare / "index.json").unlink()
    pattern = str(bare / "shard-{000000..000001}.tar")
    rc, err = _pretrain(files, tmp_path, capsys, shards=Path(pattern))
    assert rc == 2 and "config key 'train.epoch_samples'" in err and pattern in err, err
    rc, err = _pretrain(files, tmp_path, capsys, "train.epoch_samples=8", "--dry-run", shards=Path(pattern))
    assert rc == 0, err
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing either


def test_good_inputs_pass(files, tmp_path):
    model = check_model("model.name", "c2p-tiny")
    check_weights("model.pretrained", str(files["tiny"]), "c2p-tiny", model)
    assert weights_format(files["tiny"]) == "zip" and weights_format(files["trunc"]) == "truncated zip"
    check_output_dir("out", str(tmp_path / "new" / "out"))
    assert list(tmp_path.iterdir()) == []  # the probe left nothing, and created no folder


def test_output_that_is_a_file_or_not_writable_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="this path is a file") as e:
        check_output_dir("out", str(tmp_path / "f"))
    assert e.value.key == "out"
    with pytest.raises(ConfigError, match="is a file, so nothing can be created under it"):
        check_output_dir("out", str(tmp_path / "f" / "sub"))
    # /sys refuses new files even to root, for whom os.access says every folder is writable
    with pytest.raises(ConfigError, match="not writable"):
        check_output_dir("out", "/sys/c2p-out")


def test_render_refuses_a_feature_weights_typo_before_plan_json(files, tmp_path):
    out = tmp_path / "out"
    cfg = load_config(RenderJobConfig, None, ["corpus.root=/r", f"out={out}", "imgfeat.model=c2p-tiny",
                                              f"imgfeat.pretrained={files['tiny']}t"])
    with pytest.raises(ConfigError, match="imgfeat.pretrained") as e:
        check_render(cfg)
    assert e.value.value == f"{files['tiny']}t" and not out.exists()
    with pytest.raises(ConfigError, match="imgfeat.model"):
        check_render(load_config(RenderJobConfig, None, ["corpus.root=/r", f"out={out}", "imgfeat.model=ViT-Nope"]))


def test_evaluation_refuses_a_text_file_as_clip_weights(files):
    with pytest.raises(ConfigError, match="config key 'encoder.pretrained'.*a torch.save or safetensors weights file"):
        check_encoder(EncoderConfig(model="c2p-tiny", pretrained=str(files["etext"])))
    with pytest.raises(ConfigError, match="config key 'encoder.depth_tower'.*cut short"):
        check_encoder(EncoderConfig(model="c2p-tiny", depth_tower=str(files["trunc"])))
    check_encoder(EncoderConfig(model="c2p-tiny", pretrained=str(files["tiny"])))
