"""A corpus that grows: a re-run on a grown listing keeps every finished shard byte for byte,
renders only the new objects into new (mixed) shards, keeps objects that left the listing where
they are and reports them, and records which objects came in which run (plan generations).
Real Ray tasks rendering through EGL, in the ShapeNet layout of the synthetic world."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from c2p.config.core import load_config
from c2p.config.render import RenderJobConfig
from c2p.corpora.synthetic import write_synthetic
from c2p.schema import ShardIndex

SMALL = ["corpus.name=synthetic", "views.set=6", "views.image_size=24", "job.points=128", "job.previews=0",
         "job.progress=false", "job.shard_size=4"]


def _tars(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("shard-*.tar"))}


def _metas(tar: Path) -> list[dict]:
    with tarfile.open(tar) as t:
        return [json.loads(t.extractfile(m).read()) for m in t if m.name.endswith(".meta.json")]


def _uids(tar: Path) -> list[str]:
    return [m["uid"] for m in _metas(tar)]


def _grow(root: Path, extra: Path, drop: str) -> list[str]:
    """Merge the corpus ``extra`` into ``root`` (folders, taxonomy and all.csv rows) and drop model
    ``drop`` from the listing (its files stay); returns the uids added."""
    taxonomy = json.loads((root / "taxonomy.json").read_text())
    known = {t["synsetId"] for t in taxonomy}
    taxonomy += [t for t in json.loads((extra / "taxonomy.json").read_text()) if t["synsetId"] not in known]
    (root / "taxonomy.json").write_text(json.dumps(taxonomy))
    rows = list(csv.DictReader(open(root / "all.csv")))
    new_rows = list(csv.DictReader(open(extra / "all.csv")))
    for r in new_rows:
        shutil.copytree(extra / r["synsetId"] / r["modelId"], root / r["synsetId"] / r["modelId"])
    kept = [r for r in rows if r["modelId"] != drop]
    assert len(kept) == len(rows) - 1
    with open(root / "all.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for i, r in enumerate(kept + new_rows):
            w.writerow(dict(r, id=i))
    return [f"{r['synsetId']}-{r['modelId']}" for r in new_rows]


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


def test_grown_listing_renders_only_the_new_objects(ray_cluster, tmp_path):
    from c2p.shards import format_summary, run_render_job

    root = write_synthetic(tmp_path / "corpus", layout="shapenet", per_class=3, seed=0, classes=["box", "chair", "mug"])
    out = tmp_path / "shards"
    cfg = load_config(RenderJobConfig, None, [f"corpus.root={root}", f"out={out}", *SMALL])
    first = run_render_job(cfg)
    assert first["objects"] == 9 and first["shards"] == 3 and first["errors"] == 0
    before = _tars(out)
    first_uids = {n: _uids(out / n) for n in before}

    extra = write_synthetic(tmp_path / "extra", layout="shapenet", per_class=3, seed=1, classes=["airplane", "chair"])
    dropped_uid = first_uids["shard-000001.tar"][0]
    added = _grow(root, extra, dropped_uid.split("-", 1)[1])
    grown = run_render_job(cfg)

    after = _tars(out)
    assert {n: after[n] for n in before} == before  # the first run's tars: byte-identical
    new_names = sorted(set(after) - set(before))
    assert grown["shards_skipped"] == 3 and grown["shards_rendered"] == len(new_names) == 2
    rendered = [u for n in new_names for u in _uids(out / n)]
    assert sorted(rendered) == sorted(added)  # exactly the new objects were rendered
    everything = [u for n in after for u in _uids(out / n)]
    assert len(everything) == len(set(everything)) == 9 + len(added)  # every object once
    assert grown["vanished"] == 1 and grown["vanished_uids"] == [dropped_uid] and grown["new_objects"] == 6
    assert [g["objects"] for g in grown["generations"]] == [9, 6]
    index = ShardIndex.load(out)
    assert sorted(index.shards) == sorted(after) and index.num_samples == 15
    # The new class is appended, not sorted in: the label indices already written stay valid.
    assert index.labels == ["box", "chair", "mug", "airplane"]
    metas = [_metas(out / n) for n in after]
    assert {m["label"]: m["label_index"] for ms in metas for m in ms} == {"box": 0, "chair": 1, "mug": 2, "airplane": 3}
    assert (out / "generations" / "gen-0001.uids").read_text().split() == rendered
    text = format_summary(grown)
    assert "2 generations" in text and "no longer listed" in text and dropped_uid in text

    again = run_render_job(cfg)  # nothing new: nothing rendered, no new generation
    assert again["shards_rendered"] == 0 and len(again["generations"]) == 2 and _tars(out) == after
