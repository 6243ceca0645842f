"""The demo's claims, report and plots on canned results: no stage runs."""

from __future__ import annotations

import copy
import json

import pytest

from c2p.config.demo import DemoConfig
from c2p.demo.report import (
    CLAIM_INTRA,
    CLAIM_RETRIEVAL,
    CLAIM_ZEROSHOT,
    check_claims,
    claim_gdpa,
    plot_report,
    render_report,
)
from c2p.demo.settings import ABLATION, BASELINE, CLIP_PATH, DEPTH_PATH, FULL, GDPA

# The README's run (12 classes, 240 held-out objects): every claim holds.
README_RUN = {
    "zeroshot": {BASELINE: 0.425, FULL: 0.771, ABLATION: 0.738},
    "fewshot": {
        CLIP_PATH: {"1": [0.540, 0.030], "4": [0.761, 0.020], "16": [0.847, 0.010]},
        DEPTH_PATH: {"1": [0.719, 0.040], "4": [0.817, 0.015], "16": [0.921, 0.008]},
        GDPA: {"1": [0.676, 0.050], "4": [0.829, 0.012], "16": [0.928, 0.006]},
    },
    "fewshot_plots": {},
    "retrieval": {"before": 0.043, "after": 0.095, "objects": 240},
}


def _claims(r: dict) -> dict[str, bool]:
    return {c.claim: c.holds for c in check_claims(r)}


def test_claims_of_the_readme_run_hold_in_the_readme_order():
    claims = check_claims(README_RUN)
    assert [c.claim for c in claims] == [CLAIM_ZEROSHOT, CLAIM_INTRA, claim_gdpa("1"), claim_gdpa("4"), claim_gdpa("16"), CLAIM_RETRIEVAL]
    assert all(c.holds is True for c in claims)
    assert claims[0].evidence == "77.1% vs 42.5% (+34.6)"
    assert claims[2].evidence == "67.6% vs CLIP2Point path 71.9% (std 5.0)"  # within one std of the better path
    assert claims[-1].evidence == "4.3% → 9.5%"


@pytest.mark.parametrize("change, failing", [
    (lambda r: r["zeroshot"].update({BASELINE: 0.70}), CLAIM_ZEROSHOT),      # +7.1 points: short of 10
    (lambda r: r["zeroshot"].update({ABLATION: 0.771}), CLAIM_INTRA),        # a tie is not a gain
    (lambda r: r["fewshot"][GDPA].update({"4": [0.70, 0.01]}), claim_gdpa("4")),  # 70 + 1.5 < 81.7
    (lambda r: r["retrieval"].update({"after": 0.043}), CLAIM_RETRIEVAL),
])
def test_each_claim_fails_on_its_own_numbers(change, failing):
    r = copy.deepcopy(README_RUN)
    change(r)
    holds = _claims(r)
    assert holds.pop(failing) is False
    assert all(holds.values()), holds  # the others are judged on their own numbers


def test_gdpa_is_judged_against_the_better_path_at_each_k():
    r = copy.deepcopy(README_RUN)
    r["fewshot"][CLIP_PATH]["16"] = [0.95, 0.01]  # now the CLIP path is the better one at K=16
    (gdpa16,) = [c for c in check_claims(r) if c.claim == claim_gdpa("16")]
    assert gdpa16.holds is False and "CLIP path 95.0%" in gdpa16.evidence


def test_without_the_ablation_there_is_no_intra_modality_claim():
    r = copy.deepcopy(README_RUN)
    del r["zeroshot"][ABLATION]
    assert CLAIM_INTRA not in _claims(r) and len(check_claims(r)) == 5


def test_report_text_has_the_tables_the_claims_and_the_stage_times():
    r = copy.deepcopy(README_RUN)
    r["zeroshot"][FULL] = 0.50  # one claim fails: said plainly
    text, claims = render_report(r, DemoConfig(), {"world": 5.2, "render": 21.0})
    assert text.startswith("# c2p demo: CLIP2Point in miniature (demo)\n")
    assert "| CLIP2Point depth tower | 50.00 |" in text
    assert "| path | K=1 | K=4 | K=16 |" in text and "| GDPA (both, gated) | 67.60 ± 5.00 | 82.90 ± 1.20 | 92.80 ± 0.60 |" in text
    assert "| 4.30 | 9.50 |" in text
    assert f"- FAILS: {CLAIM_ZEROSHOT} — 50.0% vs 42.5% (+7.5)" in text
    assert text.count("- HOLDS: ") == 4  # the intra-modality claim now fails too (50.0 < 73.8)
    assert "| render | 21 |" in text and text.rstrip().endswith("![zero-shot and retrieval](report.png)")
    # what results.json keeps: plain dicts that survive JSON
    assert claims == json.loads(json.dumps(claims))
    assert [c["claim"] for c in claims][0] == CLAIM_ZEROSHOT and claims[0]["holds"] is False


def test_report_reads_results_back_from_json():
    """A resumed run reads its results from demo_state.json: fewshot pairs come back as lists."""
    r = json.loads(json.dumps(README_RUN))
    text, claims = render_report(r, DemoConfig(), {})
    assert all(c["holds"] for c in claims) and "| CLIP path | 54.00 ± 3.00 |" in text


def test_plot_is_written(tmp_path):
    path = tmp_path / "report.png"
    plot_report(README_RUN, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
