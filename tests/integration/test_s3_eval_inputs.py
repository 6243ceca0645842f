"""The readers after pre-training take ``s3://`` shard directories (a real SeaweedFS on 127.0.0.1,
holding a small shard directory, its tars and ``index.json``, uploaded from a local folder):
held-out retrieval streams the tars of a bucket and scores exactly as on a local copy; the pairs
export reads from a bucket and writes to one, tar for tar the bytes of the local export, each
object appearing only whole and ``pairs.json`` last; the evaluation suite takes its depth tower
from an address; and a missing prefix or object is named, with what was expected, secrets never.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from s3server import ACCESS_KEY, SECRET_KEY
from testdata import object_sample, unit_sphere_points, write_shard_dir
from torch import nn

from c2p import storage
from c2p.data import pairs
from c2p.data.pairs import PAIRS_NAME, SIZES_NAME, export_pairs, load_export
from c2p.eval.retrieval import depth_image_retrieval, load_heldout

torch.set_num_threads(1)
BUCKET = "c2p-eval-inputs"
CLASSES = ["box", "chair", "mug"]
IMAGE_SIZE = 24


@pytest.fixture(scope="module")
def shards(s3_server, tmp_path_factory):
    """A shard directory of 6 objects in 3 tars (6 RGB views of 24x24 each, 128 points; half of them
    with a caption, half captioned from their label), and its copy under s3://c2p-eval-inputs/syn;
    returns (address, local directory)."""
    rng = np.random.default_rng(0)
    views = [[30.0 * (v % 2), 60.0 * v, 1.0] for v in range(6)]

    def sample(i: int) -> dict:
        rgb = [rng.integers(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8) for _ in views]
        return object_sample("syn", f"o{i}", CLASSES[i % 3], i % 3, unit_sphere_points(rng, 128), views=views, rgb=rgb,
                             caption=f"a small {CLASSES[i % 3]}" if i % 2 else "")

    local = write_shard_dir(tmp_path_factory.mktemp("s3-eval-inputs") / "syn", [[sample(2 * s), sample(2 * s + 1)] for s in range(3)],
                            corpus="syn", labels=CLASSES)
    url = s3_server.bucket(BUCKET) + "/syn"
    s3_server.upload_dir(local, url)
    return url, local


@pytest.fixture(autouse=True)
def _private_dirs(tmp_path, monkeypatch):
    """Stage and object cache under the test's folder, not the user's ~/.cache."""
    monkeypatch.setenv("C2P_STAGE_DIR", str(tmp_path / "stage"))
    monkeypatch.setenv("C2P_CACHE_DIR", str(tmp_path / "objects"))


def _tower(seed: int) -> nn.Module:
    """[B,3,S,S] -> [B,8]: a seeded stand-in for an image or depth tower."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 8))


# ----------------------------------------------------------------------------- retrieval


def test_retrieval_on_a_bucket_scores_exactly_as_on_its_local_copy(shards):
    url, local = shards
    here, there = load_heldout(local, points=64, seed=3), load_heldout(url, points=64, seed=3)
    assert there.keys == here.keys and len(here.keys) == 6
    assert torch.equal(there.points, here.points) and torch.equal(there.views, here.views)
    assert np.array_equal(there.rgb, here.rgb) and here.rgb.shape == (6, 6, IMAGE_SIZE, IMAGE_SIZE, 3)
    image, depth = _tower(0), _tower(1)
    a = depth_image_retrieval(here, image, depth, IMAGE_SIZE, radius=0.04)
    b = depth_image_retrieval(there, image, depth, IMAGE_SIZE, radius=0.04)
    assert b == a and a["objects"] == 6 and len(a["per_view"]) == 6


# ----------------------------------------------------------------------------- pairs export


def _watch_uploads(monkeypatch, out: str) -> list[tuple[str, dict[str, int]]]:
    """Record, before each upload or delete under ``out``, what a reader listing ``out`` sees then:
    ``[("put <name>" or "delete <name>,<name>...", {name: size}), ...]``. The real calls then run."""
    seen: list[tuple[str, dict[str, int]]] = []
    put_file, put_bytes, delete = storage.put_file, storage.put_bytes, storage.delete

    def put(real):
        def call(source, url: str) -> None:
            seen.append((f"put {url.rsplit('/', 1)[1]}", storage.list_names(out)))
            real(source, url)
        return call

    def delete_some(urls: list[str]) -> None:
        if urls:
            seen.append(("delete " + ",".join(u.rsplit("/", 1)[1] for u in urls), storage.list_names(out)))
        delete(urls)

    monkeypatch.setattr(storage, "put_file", put(put_file))
    monkeypatch.setattr(storage, "put_bytes", put(put_bytes))
    monkeypatch.setattr(storage, "delete", delete_some)
    return seen


def test_pairs_export_from_and_to_a_bucket_gives_the_local_bytes_each_object_whole(shards, tmp_path, monkeypatch, capsys):
    url, local = shards
    ref = export_pairs([local], tmp_path / "ref", samples_per_shard=7)
    assert len(ref.shards) == 6 and ref.num_samples == 36  # 6 objects x 6 views, 7 a shard
    tars = {name: (tmp_path / "ref" / name).read_bytes() for name in ref.shards}

    # from the bucket (the command), to a local folder
    assert pairs.main(["--shards", url, "--out", str(tmp_path / "from"), "--samples-per-shard", "7"]).shards == ref.shards
    assert {n: (tmp_path / "from" / n).read_bytes() for n in ref.shards} == tars
    assert json.loads(capsys.readouterr().out)["sources"] == [url]

    # from the bucket to the bucket: every tar, then sizes.json, then pairs.json, each whole when it appears
    out = f"s3://{BUCKET}/pairs"
    seen = _watch_uploads(monkeypatch, out)
    summary = pairs.main(["--shards", url, "--out", out, "--samples-per-shard", "7"])
    assert [what for what, _ in seen] == [f"put {n}" for n in sorted(tars)] + [f"put {SIZES_NAME}", f"put {PAIRS_NAME}"]
    for _, listing in seen:  # what a reader could have listed at any moment: whole tars, and no pairs.json before the end
        assert PAIRS_NAME not in listing and all(listing[n] == len(tars[n]) for n in listing if n.endswith(".tar")), listing
    assert set(storage.list_names(out)) == {*tars, SIZES_NAME, PAIRS_NAME}  # no .tmp, nothing else
    assert {n: storage.read_bytes(f"{out}/{n}") for n in tars} == tars
    assert storage.read_bytes(f"{out}/{SIZES_NAME}") == (tmp_path / "ref" / SIZES_NAME).read_bytes()
    assert load_export(out) == summary and summary.train_data == f"{out}/pairs-{{000000..000005}}.tar"
    assert not any((tmp_path / "stage").iterdir())  # the stage is dropped once everything is uploaded

    # a new export over it: the old pairs.json is deleted first, then sizes.json and the old tars
    seen.clear()
    again = export_pairs([url], out, samples_per_shard=18)
    assert list(again.shards) == ["pairs-000000.tar", "pairs-000001.tar"]
    assert seen[0][0] == "delete " + ",".join([PAIRS_NAME, SIZES_NAME, *sorted(tars)])
    assert set(storage.list_names(out)) == {*again.shards, SIZES_NAME, PAIRS_NAME}


# ----------------------------------------------------------------------------- evaluation suite


def _suite_files(tmp_path: Path, root: Path) -> Path:
    """A suite of one protocol reading the synthetic corpus' test split (6 views, 128 points)."""
    (tmp_path / "proto.yaml").write_text("name: tiny\ntitle: the synthetic test split\npoints: 128\nviews: 6\n"
                                         "datasets: [{name: synthetic, reader: synthetic}]\n")
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"protocols: [proto.yaml]\npublished: ''\nroots: {{synthetic: {root}}}\n")
    return suite


def test_suite_reads_its_depth_tower_from_a_bucket(s3_server, tmp_path, capsys):
    from safetensors.torch import save_file

    from c2p.cli.evaluate import main as evaluate_main
    from c2p.corpora.synthetic import write_synthetic
    from c2p.models.clip import create_clip

    root = write_synthetic(tmp_path / "corpus", layout="shapenet", per_class=1, seed=0, test_per_class=1, classes=CLASSES)
    torch.manual_seed(7)
    tower = tmp_path / "depth_tower.safetensors"
    save_file({k: v.contiguous() for k, v in create_clip("c2p-tiny").visual.state_dict().items()}, str(tower), metadata={"model": "c2p-tiny"})
    address = f"s3://{BUCKET}/runs/tiny/export/depth_tower.safetensors"
    s3_server.bucket(BUCKET)
    storage.put_file(tower, address)
    common = ["--suite", str(_suite_files(tmp_path, root)), "--cluster", "local", "--json", "encoder.model=c2p-tiny",
              "encoder.device=cpu", "encoder.radius=0.04"]
    measured, cells = {}, {}
    for name, where in (("here", str(tower)), ("there", address)):
        assert evaluate_main([*common, "--depth-tower", where, f"run.dir={tmp_path / name}"]) == 0
        table = json.loads(capsys.readouterr().out.splitlines()[-1])
        measured[name] = table["measured"]
        cell = json.loads((Path(table["report"]["markdown"]).parent / "cells/tiny/synthetic/cell.json").read_text())["zeroshot"]
        cells[name] = {k: cell[k] for k in ("metrics", "encoder", "checkpoint_hash", "points_per_object")}
    assert measured["there"] == measured["here"] and cells["there"] == cells["here"]
    assert cells["there"]["encoder"] == "depth_tower" and cells["there"]["metrics"]["n"] == 3
    assert (tmp_path / "objects" / BUCKET / "runs/tiny/export/depth_tower.safetensors").read_bytes() == tower.read_bytes()

    missing = f"s3://{BUCKET}/runs/none/export/depth_tower.safetensors"
    assert evaluate_main([*common, "--depth-tower", missing, f"run.dir={tmp_path / 'none'}"]) == 2
    err = capsys.readouterr().err
    assert "encoder.depth_tower" in err and f"{missing} does not exist" in err and SECRET_KEY not in err
    assert not (tmp_path / "none").exists()


# ----------------------------------------------------------------------------- what is missing is named


def test_a_missing_prefix_or_object_is_named_with_what_was_expected(s3_server, tmp_path, capsys):
    nothing = s3_server.bucket(BUCKET) + "/nothing"
    with pytest.raises(FileNotFoundError, match=rf"no shard-\*.tar in {nothing}; expected the output of the render job"):
        load_heldout(nothing)
    with pytest.raises(FileNotFoundError, match=r"no shard-\*.tar in s3://no-such-bucket/syn"):
        load_heldout("s3://no-such-bucket/syn")
    with pytest.raises(ValueError, match=r"'s3://c2p-eval-inputs//syn': the key '/syn' has an empty path segment"):
        load_heldout(f"s3://{BUCKET}//syn")
    with pytest.raises(FileNotFoundError, match=rf"{nothing}/index.json does not exist; expected an s3:// shard prefix with index.json"):
        export_pairs([nothing], tmp_path / "pairs")
    with pytest.raises(FileNotFoundError, match=rf"'{nothing}/shard-000000.tar' does not exist; expected"):
        export_pairs([f"{nothing}/shard-000000.tar"], tmp_path / "pairs")
    with pytest.raises(FileNotFoundError, match=rf"'{nothing}/pairs.json' does not exist; expected a directory or s3:// prefix"):
        load_export(nothing)
    assert not (tmp_path / "pairs").exists()  # refused before anything was written
    with pytest.raises(SystemExit) as stop:
        pairs.main(["--shards", nothing, "--out", f"s3://{BUCKET}/out"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"{nothing}/index.json does not exist" in err
    assert SECRET_KEY not in err and ACCESS_KEY not in err
    assert storage.list_names(f"s3://{BUCKET}/out") == {}
