"""Tests of c2p.data: the pre-training stream over real tar shards written with c2p.schema.

Fixture shards encode their content so a batch can be checked against what was written:
view ``v`` of a sample has a uniform RGB colour and an ``imgfeat`` row that both encode
``v``, and meta.json's views give view ``v`` the elevation ``10·v``.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from testdata import LOADER_FEAT_DIM as FEAT_DIM
from testdata import (
    loader_config,
    take,
    view_colour,
    write_loader_corpora,
    write_loader_corpus,
)

from c2p.config.core import ConfigError
from c2p.data import PretrainStream, epoch_samples
from c2p.imagenorm import CLIP_MEAN, CLIP_STD
from c2p.schema import SHARD_PATTERN


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    return write_loader_corpora(tmp_path_factory.mktemp("shards"))


def test_batch_layout_and_content_rgb(corpora):
    stream = PretrainStream(loader_config([corpora["alpha"]]), rank=0, world_size=1, seed=0, batch_size=5)
    (batch,) = take(stream, 1)
    assert set(batch) == {"points", "view", "image", "label", "key"}
    assert batch["points"].shape == (5, 32, 3) and batch["points"].dtype == torch.float32
    assert batch["points"].abs().max() <= 0.5 + 1e-3
    assert batch["view"].shape == (5, 3) and batch["view"].dtype == torch.float32
    assert batch["image"].shape == (5, 3, 24, 24) and batch["image"].dtype == torch.float32
    assert batch["label"].dtype == torch.long and batch["label"].shape == (5,)
    assert len(batch["key"]) == 5 and all(k.startswith("alpha-") for k in batch["key"])
    # The image is the chosen view's render, CLIP-normalised: undo it and compare colours.
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    for b in range(5):
        v = int(round(batch["view"][b, 0].item() / 10))
        assert batch["view"][b].tolist() == pytest.approx([10.0 * v, 45.0 * v, 1.0])
        rgb = (batch["image"][b] * std + mean) * 255
        assert torch.allclose(rgb, torch.tensor(view_colour(v), dtype=torch.float32).view(3, 1, 1).expand_as(rgb), atol=1.0)
    # Points are a subset of the stored ones, without repeats.
    assert len(torch.unique(batch["points"][0], dim=0)) == 32


def test_imgfeat_mode_decodes_no_image(corpora, tmp_path):
    # RGB members replaced by garbage: the feature path must never decode them.
    root = write_loader_corpus(tmp_path / "feat", "feat", shards=1, per_shard=6)
    src = root / SHARD_PATTERN.format(0)
    dst = root / "tmp.tar"
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for info in tin.getmembers():
            data = tin.extractfile(info).read()
            if ".rgb." in info.name:
                data = b"not a png"
                info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
    dst.replace(src)
    stream = PretrainStream(loader_config([root], imgfeat_tag="tiny"), rank=0, world_size=1, seed=0, batch_size=4)
    batches = take(stream, 3)
    for batch in batches:
        assert "image" not in batch and batch["imgfeat"].shape == (4, FEAT_DIM)
        assert batch["imgfeat"].dtype == torch.float32
        # Row v of imgfeat is v+1 everywhere; the view's elevation is 10·v: same view chosen.
        assert torch.allclose(batch["imgfeat"][:, 0], batch["view"][:, 0] / 10 + 1)
    assert stream.stats()["skipped_samples"] == 0
    assert len({int(v) for b in batches for v in b["view"][:, 0]}) > 1  # views vary


def test_resume_inside_segment_replays(corpora):
    cfg = loader_config([corpora["alpha"]], imgfeat_tag="tiny")
    kw = dict(rank=0, world_size=1, seed=3, batch_size=3, reseed_every=8)
    straight = take(PretrainStream(cfg, **kw), 14)
    resumed = PretrainStream(cfg, start_step=11, **kw)
    rest = take(resumed, 3)
    assert [b["key"] for b in rest] == [b["key"] for b in straight[11:14]]
    assert all(torch.equal(a["points"], b["points"]) for a, b in zip(straight[11:], rest))
    other_seed = take(PretrainStream(cfg, **{**kw, "seed": 4}), 2)
    assert [b["key"] for b in other_seed] != [b["key"] for b in straight[:2]]


def test_missing_shards_fail_at_construction(corpora, tmp_path):
    missing_dir = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        PretrainStream(loader_config([corpora["alpha"], missing_dir]), rank=0, world_size=1, seed=0, batch_size=2)
    no_index = tmp_path / "no_index"
    no_index.mkdir()
    with pytest.raises(FileNotFoundError, match="no_index/index.json"):
        PretrainStream(loader_config([no_index]), rank=0, world_size=1, seed=0, batch_size=2)
    lost = shutil.copytree(corpora["beta"], tmp_path / "lost")
    (lost / SHARD_PATTERN.format(1)).unlink()
    with pytest.raises(FileNotFoundError, match="shard-000001.tar"):
        PretrainStream(loader_config([lost]), rank=0, world_size=1, seed=0, batch_size=2)
    pattern = str(corpora["alpha"] / "shard-{000000..000009}.tar")
    with pytest.raises(FileNotFoundError, match="shard-000004.tar"):
        PretrainStream(loader_config([pattern]), rank=0, world_size=1, seed=0, batch_size=2)


def test_patterns_and_epoch_samples(corpora, tmp_path):
    pattern = str(corpora["alpha"] / "shard-{000000..000001}.tar")
    assert epoch_samples([str(corpora["alpha"]), str(corpora["beta"])]) == 32 + 16
    assert epoch_samples([pattern]) == 16  # counts from the index.json beside the tars
    stream = PretrainStream(loader_config([pattern]), rank=0, world_size=1, seed=0, batch_size=2)
    assert stream.epoch_samples == 16
    keys = {k for b in take(stream, 20) for k in b["key"]}
    assert keys <= {f"alpha-s{s}o{i}" for s in range(2) for i in range(8)}
    bare = shutil.copytree(corpora["beta"], tmp_path / "bare")
    (bare / "index.json").unlink()
    with pytest.raises(ValueError, match="index.json"):
        epoch_samples([str(bare / "shard-{000000..000001}.tar")])


def test_corpora_mixed_by_weight(corpora):
    cfg = loader_config([corpora["alpha"], corpora["beta"]], weights=[3.0, 1.0], imgfeat_tag="tiny")
    keys = [k for b in take(PretrainStream(cfg, rank=0, world_size=1, seed=0, batch_size=20), 12) for k in b["key"]]
    share = sum(k.startswith("alpha-") for k in keys) / len(keys)
    assert 0.65 < share < 0.85, share
    only = loader_config([corpora["alpha"], corpora["beta"]], weights=[1.0, 0.0], imgfeat_tag="tiny")
    keys = [k for b in take(PretrainStream(only, rank=0, world_size=1, seed=0, batch_size=20), 3) for k in b["key"]]
    assert all(k.startswith("alpha-") for k in keys)


def test_finite_passes_split_by_rank(corpora):
    cfg = loader_config([corpora["alpha"]], resampled=False, shuffle_buffer=0, imgfeat_tag="tiny")
    per_rank = []
    for rank in range(2):
        stream = PretrainStream(cfg, rank=rank, world_size=2, seed=5, batch_size=4)
        per_rank.append([k for b in take(stream, 4) for k in b["key"]])  # 2 shards x 8 = one pass
    assert not set(per_rank[0]) & set(per_rank[1])
    assert len(set(per_rank[0]) | set(per_rank[1])) == 32
    with pytest.raises(ConfigError, match="data.resampled"):
        PretrainStream(loader_config([corpora["beta"]], resampled=False), rank=0, world_size=4, seed=0, batch_size=2)


def test_bad_settings_refused(corpora):
    with pytest.raises(ConfigError, match="data.weights"):
        PretrainStream(loader_config([corpora["alpha"]], weights=[1.0, 2.0]), rank=0, world_size=1, seed=0, batch_size=2)
    with pytest.raises(ValueError, match="rank 2"):
        PretrainStream(loader_config([corpora["alpha"]]), rank=2, world_size=2, seed=0, batch_size=2)


def test_cached_npy_decoder_matches_numpy():
    from c2p.data.npy import decode_npy_cached
    from c2p.schema import decode_npy

    rng = np.random.default_rng(0)
    arrays = [rng.random((64, 3)).astype(np.float16), np.asfortranarray(rng.random((5, 7))), np.arange(3), np.float32(2.5)]
    for a in arrays:
        buf = io.BytesIO()
        np.save(buf, a)
        for _ in range(2):  # the second time from the header cache
            got = decode_npy_cached(buf.getvalue())
            assert got.dtype == decode_npy(buf.getvalue()).dtype and np.array_equal(got, a)
    with pytest.raises(ValueError, match="expected 384"):
        buf = io.BytesIO()
        np.save(buf, arrays[0])
        decode_npy_cached(buf.getvalue()[:300])


def test_reader_counts_each_broken_shard_once(corpora):
    from c2p.data.reader import ReadStats, read_samples

    broken = corpora["broken"]
    stats = ReadStats()
    urls = [str(broken / SHARD_PATTERN.format(i)) for i in range(4)]
    keys = [s["__key__"] for s in read_samples(urls, stats)]
    assert stats.corrupt_shards == 2 and stats.shards_opened == 4
    assert "shard-000002.tar" in stats.last_error or "shard-000001.tar" in stats.last_error
    assert keys[:8] == [f"broken-s0o{i}" for i in range(8)]
    assert 0 < sum(k.startswith("broken-s1") for k in keys) < 8  # the readable head of the truncated tar
    assert keys[-4:] == [f"broken-x{i}" for i in range(4)]  # x2 is read; decoding skips it


def test_reader_opens_each_shard_one_ahead_and_closes_what_it_opened(corpora, tmp_path):
    """read_samples opens a tar while the one before it is read (from a bucket its GET is then in
    flight): a tar that cannot be opened counts once, in its turn, and a stream stopped early
    leaves no file open."""
    import gc
    import warnings

    from c2p.data.reader import ReadStats, read_samples

    alpha = corpora["alpha"]
    urls = [str(alpha / SHARD_PATTERN.format(i)) for i in range(3)]
    stats = ReadStats()
    keys = [s["__key__"] for s in read_samples([urls[0], str(tmp_path / "gone.tar"), urls[1]], stats)]
    assert keys == [s["__key__"] for s in read_samples([urls[0], urls[1]], ReadStats())]
    assert stats.corrupt_shards == 1 and stats.shards_opened == 3 and "gone.tar" in stats.last_error
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        samples = read_samples(urls, ReadStats())
        next(samples)  # the first tar is being read, the second is open
        samples.close()
        del samples
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_read_shard_yields_whole_samples_then_raises(corpora):
    """One shard in order: what read_samples reads of a whole shard; on a truncated one, the
    samples before the damage, never the one the damage cut, then the error."""
    from c2p.data.reader import ReadStats, read_samples, read_shard

    broken = corpora["broken"]
    whole = str(broken / SHARD_PATTERN.format(0))
    assert [s["__key__"] for s in read_shard(whole)] == [s["__key__"] for s in read_samples([whole], ReadStats())]
    assert all(s["__url__"] == whole and {"points.npy", "meta.json"} <= set(s) for s in read_shard(whole))
    only_meta = next(read_shard(whole, select=lambda n: n.endswith(".json")))
    assert set(only_meta) == {"__key__", "__url__", "meta.json"}

    truncated = str(broken / SHARD_PATTERN.format(1))
    got = []
    with pytest.raises(tarfile.ReadError):
        for sample in read_shard(truncated):
            got.append(sample["__key__"])
    streamed = [s["__key__"] for s in read_samples([truncated], ReadStats())]
    assert got == streamed[:-1] and len(got) >= 1  # the stream also hands on the cut sample (decoding skips it)
    with pytest.raises(tarfile.ReadError):
        next(read_shard(str(broken / SHARD_PATTERN.format(2))))  # not a tar


@pytest.mark.parametrize("fmt", ["ustar", "pax", "gnu", "gz"])
def test_tar_members_match_tarfile(tmp_path, fmt):
    """The fast member reader agrees with tarfile on what other writers produce (long names, pax, gzip)."""
    from c2p.data.tarmembers import iter_members

    names = ["a.points.npy", "a.meta.json", "b" * 120 + ".rgb.0.png", "dir/c.txt", "héllo.txt"]
    if fmt == "ustar":
        names = [n for n in names if len(n) < 100 and n.isascii()]
    path = tmp_path / ("x.tar.gz" if fmt == "gz" else "x.tar")
    tar_format = {"ustar": tarfile.USTAR_FORMAT, "pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT, "gz": tarfile.PAX_FORMAT}
    with tarfile.open(path, "w:gz" if fmt == "gz" else "w", format=tar_format[fmt]) as tar:
        info = tarfile.TarInfo("dir")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for i, name in enumerate(names):
            data = bytes([i]) * (700 * i + 3)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    got = list(iter_members(str(path)))
    assert [n for n, _ in got] == names
    assert [d for _, d in got] == [bytes([i]) * (700 * i + 3) for i in range(len(names))]
    assert [n for n, _ in iter_members(str(path), select=lambda n: n.endswith(".txt"))] == [n for n in names if n.endswith(".txt")]
    if fmt != "gz":  # cut anywhere: always an error, never a quiet early end
        whole = path.read_bytes()
        with tarfile.open(path) as tar:
            last = tar.getmembers()[-1]
        end_of_data = last.offset_data + (last.size + 511) // 512 * 512  # where the end marker starts
        for cut in (100, 600, len(whole) // 2, end_of_data - 10, end_of_data, end_of_data + 600):
            path.write_bytes(whole[:cut])
            with pytest.raises(tarfile.ReadError):
                list(iter_members(str(path), select=lambda n: False))


def test_loader_imports_no_heavy_engines():
    import subprocess
    import sys

    code = "import sys, c2p.data; print(sorted(m for m in ('ray', 'moderngl', 'deepspeed', 'submitit') if m in sys.modules))"
    repo = Path(__file__).resolve().parents[2]  # `python -c` puts its cwd first on sys.path
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo)
    assert out.stdout.strip() == "[]"
