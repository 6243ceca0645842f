"""The demo's small-CLIP bridge: object shards → image–text pair shards → open_clip_train
(c2p-train-clip, :mod:`c2p.cli.train_clip` over :mod:`c2p.train.openclip`) → weights that create_clip loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from testdata import object_sample, write_shard_dir

from c2p.cli.base import UsageError
from c2p.cli.train_clip import train
from c2p.data.pairs import export_pairs, load_export
from c2p.data.reader import read_shard
from c2p.models.clip import create_clip, get_tokenizer
from c2p.train.openclip import open_clip_train_fixes

REPO = Path(__file__).resolve().parents[2]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 50, 230)}


def write_object_shards(root: Path, per_class: int = 4, views: int = 2, size: int = 32, captions: bool = True) -> Path:
    """A c2p shard directory: per object random points, `views` coloured RGB views, a caption."""
    rng = np.random.default_rng(0)
    labels = sorted(COLOURS)
    objects = [(label, i) for i in range(per_class) for label in labels]

    def sample(label: str, i: int) -> dict:
        rgb = [np.clip(np.array(COLOURS[label]) + rng.integers(-20, 20, (size, size, 3)), 0, 255).astype(np.uint8)
               for _ in range(views)]
        return object_sample("test", f"{label}{i}", label, labels.index(label), rng.standard_normal((16, 3)) * 0.3,
                             rgb=rgb, caption=f"a {label} block" if captions else "", source="mem")

    halves = (objects[: len(objects) // 2], objects[len(objects) // 2:])
    return write_shard_dir(root, [[sample(label, i) for label, i in half] for half in halves], corpus="test", labels=labels)


def test_export_pairs_one_image_and_caption_per_sample(tmp_path):
    src = write_object_shards(tmp_path / "objects")
    summary = export_pairs([src], tmp_path / "pairs", samples_per_shard=10)
    assert summary.objects == 12 and summary.num_samples == 24
    assert summary.shards == {"pairs-000000.tar": 10, "pairs-000001.tar": 10, "pairs-000002.tar": 4}
    assert summary.train_data.endswith("pairs-{000000..000002}.tar")
    assert json.loads((tmp_path / "pairs" / "sizes.json").read_text()) == summary.shards
    assert load_export(tmp_path / "pairs") == summary
    with tarfile.open(tmp_path / "pairs" / "pairs-000000.tar") as tar:
        names = tar.getnames()
    assert names[:4] == ["test-blue0_v0.png", "test-blue0_v0.txt", "test-blue0_v1.png", "test-blue0_v1.txt"]
    first = next(read_shard(tmp_path / "pairs" / "pairs-000000.tar"))
    assert first["txt"] == b"a blue block"
    # the PNG is the object shard's bytes, unchanged
    obj = next(read_shard(src / "shard-000000.tar"))
    assert first["png"] == obj["rgb.0.png"]
    # webdataset (what open_clip_train reads with) sees image + text per sample
    import webdataset as wds

    samples = list(wds.WebDataset(summary.train_data, shardshuffle=False, empty_check=False).decode("pilrgb")
                   .to_tuple("png;jpg;jpeg;webp", "txt"))
    assert len(samples) == 24 and samples[0][0].size == (32, 32) and samples[0][1] == "a blue block"


def test_export_pairs_skips_corrupt_shards_and_uses_label_captions(tmp_path):
    src = write_object_shards(tmp_path / "objects", captions=False)
    data = (src / "shard-000001.tar").read_bytes()
    (src / "shard-000001.tar").write_bytes(data[: len(data) // 3])  # truncated
    summary = export_pairs([src], tmp_path / "pairs", views=[1], caption_template="a {label}")
    assert len(summary.corrupt_shards) == 1 and "shard-000001.tar" in summary.corrupt_shards[0]
    assert summary.num_samples == summary.objects >= 6  # the intact shard's 6 objects, view 1 only
    first = next(read_shard(tmp_path / "pairs" / "pairs-000000.tar"))
    assert first["__key__"].endswith("_v1") and first["txt"] in (b"a blue", b"a green", b"a red")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        export_pairs([tmp_path / "nowhere"], tmp_path / "p2")


def test_open_clip_train_trains_on_pair_shards_and_resumes(tmp_path):
    """open_clip_train itself, on 3 pair shards (brace pattern), c2p-tiny, 6 steps."""
    src = write_object_shards(tmp_path / "objects")
    pairs = export_pairs([src], tmp_path / "pairs", samples_per_shard=10)
    out = tmp_path / "clip"
    common = ["--shards", pairs.out, "--out", str(out), "--model", "c2p-tiny", "--batch-size", "8", "--warmup", "1",
              "--lr", "5e-3", "--log-every", "1"]
    # SLURM_NTASKS=2 as inside a multi-task allocation: still one process, not a DDP job waiting for a peer
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SLURM_NTASKS": "2"}
    proc = subprocess.run([sys.executable, str(REPO / "launch" / "train_clip.py"), *common, "--epochs", "2"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].split() == ["weights", str(out / "clip.safetensors")]  # the summary ends with the paths
    assert "Train Epoch: 1 [24/24 (100%)]" in proc.stdout  # open_clip_train's own progress line, on stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engine"] == "open_clip_train" and summary["steps"] == 6 and summary["epochs_run"] == 2
    argv = summary["argv"]
    assert argv[argv.index("--train-data") + 1] == pairs.train_data and pairs.train_data.endswith("{000000..000002}.tar")
    assert argv[argv.index("--dataset-type") + 1] == "webdataset" and argv[argv.index("--train-num-samples") + 1] == "24"
    assert np.isfinite(summary["last"]["loss"]) and summary["samples_per_s"] > 0
    run = out / "open_clip_train"
    assert (run / "out.log").is_file() and (run / "params.txt").is_file()
    # open_clip_train's own checkpoint loads through create_clip and is what clip.safetensors holds
    ckpt = run / "checkpoints" / "epoch_2.pt"
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["epoch"] == 2
    final = create_clip("c2p-tiny", pretrained=summary["weights"])
    from_ckpt = create_clip("c2p-tiny", pretrained=str(ckpt))
    torch.manual_seed(0)
    fresh = create_clip("c2p-tiny")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(final.encode_image(x), from_ckpt.encode_image(x))
    assert not torch.allclose(final.encode_image(x), fresh.encode_image(x))  # it trained
    assert final.encode_text(get_tokenizer("c2p-tiny")(["a red block"])).shape == (1, 64)

    # --resume latest (the default), in this process: continues from epoch_latest.pt with epoch 3 only
    torch.set_num_threads(1)
    resumed = train(common + ["--epochs", "3"])
    assert resumed["start_epoch"] == 2 and resumed["epochs_run"] == 1 and resumed["checkpoint"].endswith("epoch_3.pt")
    assert "resuming checkpoint" in (run / "out.log").read_text()
    after = create_clip("c2p-tiny", pretrained=resumed["weights"])
    assert not torch.allclose(after.encode_image(x), final.encode_image(x))
    with pytest.raises(UsageError, match="already holds a run"):
        train(common + ["--epochs", "3", "--resume", "none"])
    with pytest.raises(UsageError, match="--pretrained"):
        train(["--shards", pairs.out, "--out", "o", "--pretrained", str(tmp_path / "missing.pt")])


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    """Two open_clip_train runs with one --seed give bit-identical weights, with 0 and 1 workers:
    3 pair shards (shard order shuffled), 24 pairs through the sample shuffle buffer, 2 epochs of
    3 batches, so a clock-seeded shuffle would change the batches and the weights."""
    torch.set_num_threads(1)
    src = write_object_shards(tmp_path / "objects")
    pairs = export_pairs([src], tmp_path / "pairs", samples_per_shard=10)
    common = ["--shards", pairs.out, "--model", "c2p-tiny", "--batch-size", "8", "--warmup", "1", "--lr", "5e-3",
              "--epochs", "2", "--log-every", "100"]

    def weights(name: str, *extra: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        summary = train(common + ["--out", str(tmp_path / name), *extra])
        assert summary["steps"] == 6 and summary["epochs_run"] == 2
        return load_file(summary["weights"])

    def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
        assert a.keys() == b.keys()
        return [k for k in a if not torch.equal(a[k], b[k])]

    first = weights("s0", "--seed", "0")
    assert differing(first, weights("s0-again", "--seed", "0")) == []
    assert len(differing(first, weights("s1", "--seed", "1"))) == len(first)
    # one DataLoader worker: the shuffle generator lives (and carries over epochs) in the worker
    worker = weights("s0-w1", "--seed", "0", "--workers", "1")
    assert differing(worker, weights("s0-w1-again", "--seed", "0", "--workers", "1")) == []


def test_open_clip_train_fixes_seed_the_sample_shuffle_per_run_not_per_epoch():
    """The stage open_clip_train builds as ``wds.shuffle(bufsize=..., initial=...)`` (no seed):
    inside the fixes one run's order repeats with the seed, and its epochs differ (one shard,
    so one shard order, must not mean the same batches every epoch)."""
    import webdataset as wds

    original = wds.shuffle

    def epochs(stage, n: int = 2) -> list[list[int]]:
        pipeline = wds.DataPipeline(lambda: iter(range(50)), stage)
        return [list(pipeline) for _ in range(n)]

    with open_clip_train_fixes(seed=3):
        run = epochs(wds.shuffle(bufsize=5000, initial=1000))
        again = epochs(wds.shuffle(bufsize=5000, initial=1000))
    with open_clip_train_fixes(seed=4):
        other = epochs(wds.shuffle(bufsize=5000, initial=1000))
    assert wds.shuffle is original  # restored on exit
    assert sorted(run[0]) == list(range(50)) and run[0] != list(range(50))
    assert run == again and run[0] != run[1]
    assert other[0] != run[0]
