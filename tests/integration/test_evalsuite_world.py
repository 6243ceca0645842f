"""The evaluation suite end to end on the synthetic world, exported in the released formats
(c2p.corpora.released) so the readers of the real releases run: one table under both protocols
from the command, the settings that reached the towers, re-runs giving the same bytes, and the
two protocols giving different numbers where their settings differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from testdata import CoverageTower, WordSumText, WordTokenizer

from c2p.cli.evaluate import main as evaluate_main

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]
CLASSES = ["box", "chair", "cone", "sphere"]


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A 4-class synthetic world (3 train + 2 test objects per class) exported in all four
    release formats, and a c2p-tiny visual tower saved as an exported depth tower."""
    from safetensors.torch import save_file

    from c2p.corpora.released import export_released
    from c2p.corpora.synthetic import write_synthetic
    from c2p.models.clip import create_clip

    base = tmp_path_factory.mktemp("evalsuite")
    world = write_synthetic(base / "world", layout="shapenet", per_class=3, seed=0, test_per_class=2, classes=CLASSES)
    roots = export_released(world, base / "released", points=2048, openshape_points=10000)
    torch.manual_seed(7)
    tower = base / "depth_tower.safetensors"
    save_file({k: v.contiguous() for k, v in create_clip("c2p-tiny").visual.state_dict().items()}, str(tower), metadata={"model": "c2p-tiny"})
    return base, roots, tower


def _roots(roots: dict) -> list[str]:
    return [f"roots.{k}={v}" for k, v in roots.items()]


def test_suite_command_writes_one_table_under_both_protocols(tmp_path, released, capsys):
    base, roots, tower = released
    args = ["--suite", str(REPO / "configs/eval/suite.yaml"), "--depth-tower", str(tower), "--cluster", "local", "--json",
            f"run.dir={tmp_path}", "encoder.model=c2p-tiny", "encoder.device=cpu", "encoder.batch_size=16",
            "fewshot.shots=[1]", "fewshot.seeds=[0,1]", "fewshot.epochs=2", *_roots(roots)]
    assert evaluate_main(args) == 0
    out = tmp_path / "suite" / "eval" / "suite"
    table = json.loads((out / "table.json").read_text())
    assert table["protocols"] == ["clip2point", "openshape"] and table["skipped"] == []
    cells = {(c["protocol"], c["dataset"]): c for c in table["cells"]}
    assert set(cells) == {("clip2point", "modelnet40"), ("clip2point", "scanobjectnn"), ("openshape", "modelnet40"),
                          ("openshape", "objaverse_lvis"), ("openshape", "scanobjectnn")}
    # the settings reached the towers: the points rendered per object and the prompts tokenised
    from c2p.config import load_config
    from c2p.config.evalsuite import ProtocolConfig

    templates = load_config(ProtocolConfig, REPO / "configs/eval/protocols/openshape.yaml").templates
    c2p_mn, os_mn, os_so = cells[("clip2point", "modelnet40")], cells[("openshape", "modelnet40")], cells[("openshape", "scanobjectnn")]
    assert c2p_mn["zeroshot"]["points_per_object"] == 1024 and os_mn["zeroshot"]["points_per_object"] == 10000
    assert os_so["zeroshot"]["points_per_object"] == 2048
    assert c2p_mn["zeroshot"]["prompts"] == [f"image of a {c}." for c in CLASSES]
    assert os_mn["zeroshot"]["prompts"] == [t.format(c) for c in CLASSES for t in templates]
    assert c2p_mn["zeroshot"]["encoder"] == "depth_tower" and c2p_mn["zeroshot"]["metrics"]["n"] == 8
    assert Path(c2p_mn["zeroshot"]["report"]["confusion"]).stat().st_size > 0
    md = (out / "table.md").read_text()
    assert "| dataset | row | metric | clip2point | openshape |" in md
    assert "| modelnet40 | 1-shot | top-1 |" in md and " ± " in md  # K-shot rows: mean ± std over 2 seeds
    assert "| objaverse_lvis | zero-shot | top-1 | — |" in md  # only OpenShape's protocol reads LVIS
    assert "(published)" in md.split("## Published")[1] and "(published)" not in md.split("## Published")[0]
    first = {k: (out / f"table.{k}").read_bytes() for k in ("md", "json", "csv")}
    # the same inputs again (cached view features, same seeds): the same table, byte for byte
    capsys.readouterr()
    assert evaluate_main(args) == 0
    assert {k: (out / f"table.{k}").read_bytes() for k in ("md", "json", "csv")} == first


def test_protocols_give_different_numbers_where_their_settings_differ(tmp_path, released):
    """Hand-built towers whose answers depend on both settings: the visual feature is the
    fraction of depth pixels covered (more points cover more), the text feature the sum of the
    prompt's word vectors ("photo", in 50 of OpenShape's 64 templates, tilts every class)."""
    from c2p.eval.suite import load_suite, run_suite
    from c2p.eval.towers import Towers

    base, roots, _ = released
    vocab = {c: i + 1 for i, c in enumerate(CLASSES)} | {"photo": 5}
    words = torch.tensor([[1.0, 0.1], [1.0, 0.6], [1.0, 0.3], [1.0, 1.5], [0.4, -0.6]])
    towers = Towers(WordSumText(words), WordTokenizer(vocab), CoverageTower(), None, "", "hand-built")
    plan = load_suite(REPO / "configs/eval/suite.yaml", [f"run.dir={tmp_path}", "encoder.image_size=32", "encoder.device=cpu",
                                                        "encoder.radius=0.04", *_roots(roots)])
    table = run_suite(plan, towers=towers)
    top1 = {r["dataset"]: {p: v[0] for p, v in r["values"].items()} for r in table["measured"] if r["metric"] == "top1"}
    per_obj = {(c["protocol"], c["dataset"]): c["zeroshot"]["metrics"] for c in table["cells"]}
    assert top1["modelnet40"]["clip2point"] != top1["modelnet40"]["openshape"], per_obj
    assert top1["scanobjectnn"]["clip2point"] != top1["scanobjectnn"]["openshape"], per_obj
