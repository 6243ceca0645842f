"""The suite's parts without a tower: point sampling, the prompt ensemble on a hand-built case,
protocol and suite configs (the shipped ones included), the plan's skips and the table.
The suite end to end on the synthetic world: tests/integration/test_evalsuite.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from testdata import WordSumText, WordTokenizer

from c2p.config import ConfigError, load_config
from c2p.config.evalsuite import ProtocolConfig, PublishedNumbers
from c2p.eval.sampling import farthest_point_indices, sample_indices
from c2p.eval.suite import load_suite
from c2p.eval.suitetable import write_table

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "configs/eval/suite.yaml"


# ----------------------------------------------------------------------------- sampling


def test_sampling_first_fps_and_seeded_random():
    pts = torch.tensor([[0.0, 0, 0], [0.1, 0, 0], [1.0, 0, 0], [0.5, 0, 0], [0.9, 0, 0]])
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    assert sample_indices(pts, 3, "first", g(0)).tolist() == [0, 1, 2]
    assert farthest_point_indices(pts, 3).tolist() == [0, 2, 3]  # 0, then the farthest (1.0), then the middle (0.5)
    assert sample_indices(pts, 7, "first", g(0)).tolist() == [0, 1, 2, 3, 4, 0, 1]  # fewer stored than asked: cycle
    a, b = sample_indices(pts, 3, "random", g(1)), sample_indices(pts, 3, "random", g(1))
    assert torch.equal(a, b) and len(set(a.tolist())) == 3
    with pytest.raises(ValueError, match="sampling: got 'grid'"):
        sample_indices(pts, 3, "grid", g(0))


# ----------------------------------------------------------------------------- prompt ensemble


def test_prompt_ensemble_fixes_a_template_that_alone_misleads():
    """The object's feature is [1,0,0], a ball. Words: ball → [1,0,0], rod → [0,1,0],
    itap → [3,-1,0]. With "itap of a {}." alone the prompts are [4,-1,0] (ball, cos 4/√17 = 0.970)
    and [3,0,0] (rod, cos 1): wrong. Averaged (after normalising) with "a photo of a {}." ([1,0,0] and
    [0,1,0]) the ball prompt has cos 0.993 and the rod prompt cos 1/√2: right."""
    from c2p.eval.zeroshot import PromptLog, zeroshot_logits
    from c2p.models.clip import encode_text

    vocab = {"ball": 1, "rod": 2, "itap": 3}
    model = WordSumText(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [3.0, -1.0, 0]]))
    obj = torch.tensor([[[1.0, 0.0, 0.0]]])  # [N=1, V=1, D=3]
    single = PromptLog(WordTokenizer(vocab))
    alone = encode_text(model, single, ["ball", "rod"], ["itap of a {}."])
    assert single.prompts == ["itap of a ball.", "itap of a rod."]
    assert zeroshot_logits(obj, alone)[0].tolist() == pytest.approx([4 / 17**0.5, 1.0])
    ensemble = PromptLog(WordTokenizer(vocab))
    both = encode_text(model, ensemble, ["ball", "rod"], ["itap of a {}.", "a photo of a {}."])
    assert ensemble.prompts == ["itap of a ball.", "a photo of a ball.", "itap of a rod.", "a photo of a rod."]
    ball = (torch.tensor([4.0, -1, 0]) / 17**0.5 + torch.tensor([1.0, 0, 0])) / 2
    assert zeroshot_logits(obj, both)[0].tolist() == pytest.approx([float(ball[0] / ball.norm()), 2**-0.5])
    assert zeroshot_logits(obj, alone).argmax().item() == 1 and zeroshot_logits(obj, both).argmax().item() == 0


# ----------------------------------------------------------------------------- configs and the plan


def test_shipped_protocols_say_what_differs():
    c2p_ = load_config(ProtocolConfig, REPO / "configs/eval/protocols/clip2point.yaml")
    osh = load_config(ProtocolConfig, REPO / "configs/eval/protocols/openshape.yaml")
    assert (c2p_.points, c2p_.templates) == (1024, ["image of a {}."])
    assert osh.points == 10000 and len(osh.templates) == 64 and all("{}" in t for t in osh.templates)
    assert {d.name: d.axis for d in osh.datasets} == {"modelnet40": "swap_yz", "objaverse_lvis": "swap_yz", "scanobjectnn": "as_stored"}
    pub = load_config(PublishedNumbers, REPO / "configs/eval/published.yaml")
    got = {(n.method, n.protocol): n.value for n in pub.numbers}
    assert got[("CLIP2Point", "clip2point")] == 49.38 and got[("CLIP2Point", "openshape")] == 49.5 and got[("Uni3D-g", "openshape")] == 88.2
    assert all(n.source for n in pub.numbers)


def test_suite_plan_skips_absent_releases_and_refuses_bad_files(tmp_path):
    (tmp_path / "h5").mkdir()
    plan = load_suite(SUITE, [f"roots.modelnet_h5={tmp_path / 'h5'}", f"run.dir={tmp_path}"])
    assert [(c.protocol, c.dataset) for c in plan.cells] == [("clip2point", "modelnet40")]
    cfg = plan.cells[0].cfg
    assert (cfg.data.corpus, cfg.data.points, cfg.data.sampling, cfg.encoder.templates) == ("modelnet_h5", 1024, "first", ["image of a {}."])
    assert {(s["protocol"], s["dataset"]) for s in plan.skipped} == {
        ("clip2point", "scanobjectnn"), ("openshape", "modelnet40"), ("openshape", "objaverse_lvis"), ("openshape", "scanobjectnn")}
    assert all(s["reason"].startswith("no data:") for s in plan.skipped)
    with pytest.raises(ConfigError, match=r"'roots.pointnet'.*a path \(string\) under a reader name"):
        load_suite(SUITE, ["roots.pointnet=/x"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntemplates: ['image of a thing']\ndatasets: [{name: m, reader: modelnet_h5}]\n")
    with pytest.raises(ConfigError, match=r"'templates'.*each containing '\{\}'"):
        load_suite(SUITE, [f"protocols=[{bad}]"])
    with pytest.raises(ConfigError, match=r"'fewshot.paths'.*encoder.depth_tower"):
        load_suite(SUITE, ["fewshot.shots=[1]"])


def test_suite_takes_an_s3_depth_tower_without_asking_the_server_and_refuses_a_malformed_one(tmp_path, monkeypatch):
    # No server runs here: an address that is well formed is planned as is (the launcher and the cells fetch it).
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    (tmp_path / "h5").mkdir()
    common = [f"roots.modelnet_h5={tmp_path / 'h5'}", f"run.dir={tmp_path}"]
    url = "s3://ckpt/b32/export/depth_tower.safetensors"
    plan = load_suite(SUITE, [*common, f"encoder.depth_tower={url}"])
    assert [c.cfg.encoder.depth_tower for c in plan.cells] == [url]
    for bad, why in (("s3://ckpt/b32/export/", "is a prefix, not an object"), ("s3:///depth.safetensors", "is not a bucket name"),
                     ("s3://ckpt//depth.safetensors", "empty path segment")):
        with pytest.raises(ConfigError, match=rf"'encoder.depth_tower'.*got '{re.escape(bad)}'; expected an existing local weights "
                                              rf"file or the s3://bucket/key of an exported depth tower \(.*{why}"):
            load_suite(SUITE, [*common, f"encoder.depth_tower={bad}"])
    with pytest.raises(ConfigError, match=r"'encoder.depth_tower'.*expected an existing local weights file or the s3://"):
        load_suite(SUITE, [*common, f"encoder.depth_tower={tmp_path / 'missing.safetensors'}"])


def _cell(protocol: str, dataset: str, top1: float, out: Path, rows=None) -> dict:
    m = {"top1": top1, "top3": 1.0, "top5": 1.0, "mean_class_acc": top1, "n": 4, "per_class_acc": {"a": top1, "b": None}}
    return {"protocol": protocol, "dataset": dataset, "zeroshot": {"metrics": m, "checkpoint_hash": "", "clip_hash": "h",
            "report": {"confusion": str(out / "cells" / protocol / dataset / "confusion.png")}}, "fewshot": {"rows": rows or []}}


def test_table_keeps_published_apart_and_shows_kshot_mean_and_std(tmp_path):
    protos = [load_config(ProtocolConfig, REPO / f"configs/eval/protocols/{p}.yaml") for p in ("clip2point", "openshape")]
    pub = load_config(PublishedNumbers, REPO / "configs/eval/published.yaml")
    k1 = [{"shots": 1, "seeds": [0, 1], "top1_mean": 0.5, "top1_std": 0.1, "mean_class_acc_mean": 0.4, "mean_class_acc_std": 0.0}]
    cells = [_cell("clip2point", "modelnet40", 0.25, tmp_path, k1), _cell("openshape", "modelnet40", 0.75, tmp_path)]
    t = write_table(tmp_path, protos, cells, [{"protocol": "openshape", "dataset": "objaverse_lvis", "reader": "openshape_lvis", "reason": "no data: x"}], pub)
    md = Path(t["report"]["markdown"]).read_text()
    assert "| modelnet40 | zero-shot | top-1 | 25.00 | 75.00 |" in md
    assert "| modelnet40 | 1-shot | top-1 | 50.00 ± 10.00 (n=2) | — |" in md
    measured, published = md.split("## Published")
    assert "49.38" not in measured and "| CLIP2Point (published) | modelnet40 | top-1 | 49.38 | 49.50 |" in published
    assert "openshape × objaverse_lvis (openshape_lvis): no data: x" in md
    assert "[clip2point](cells/clip2point/modelnet40/confusion.png)" in md
    csv_rows = Path(t["report"]["csv"]).read_text().splitlines()
    assert "measured,modelnet40,1-shot,top1,clip2point,50.0000,10.0000,2," in csv_rows
    assert any(r.startswith("published,modelnet40,CLIP2Point,top1,openshape,49.5000,,,") for r in csv_rows)
