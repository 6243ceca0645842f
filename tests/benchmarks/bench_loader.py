"""Loader throughput: PretrainStream samples/s vs a bare read of the same tar files.

Writes a shard directory of realistic samples (8192 float16 points, 10 RGB PNG renders of
224x224, imgfeat [10,512] float16, meta.json) with c2p.schema, then alternates, in one
run, a bare read (``tarfile`` iteration reading every member's bytes, the floor any tar
loader pays) and the stream (resampled shards, shuffle buffer of 1000, 1024-point subsample,
one view, collated tensors) over ``passes`` x the samples written, timed from the moment
its shuffle buffer is full: the steady state of a long run (the fill reads up to 1000
samples ahead once per lane and reseed segment). Both in one process (``workers=0``): the ratio is the loader's
per-sample overhead over raw I/O on one core. The ``image`` rows decode one PNG per sample
(no imgfeat) for comparison. Prints one JSON object with medians and ratios.

    python tests/benchmarks/bench_loader.py [--samples 600 --passes 6 --repeats 5 --workers 0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from c2p.config.pretrain import DataConfig  # noqa: E402
from c2p.data import PretrainStream  # noqa: E402
from c2p.schema import SHARD_PATTERN, SampleMeta, ShardIndex, ShardWriter, encode_image, encode_sample, make_key  # noqa: E402

SHUFFLE_BUFFER = 1000
VIEWS = [(0, 0), (90, 0), (180, 0), (270, 0), (225, -45), (225, 45), (315, -45), (315, 45), (0, -90), (0, 90)]


def render_like(rng: np.random.Generator, size: int = 224) -> np.ndarray:
    """A white-background image with a shaded blob: compresses like a real render."""
    yy, xx = np.mgrid[:size, :size] / size
    cx, cy, r = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0.2, 0.35)
    inside = (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
    shade = (120 + 100 * (xx - yy)).clip(0, 255)
    img = np.full((size, size, 3), 255, np.uint8)
    for c, tint in enumerate(rng.uniform(0.5, 1.0, 3)):
        img[..., c][inside] = (shade[inside] * tint).astype(np.uint8)
    return img


def write_shards(root: Path, samples: int, per_shard: int) -> Path:
    rng = np.random.default_rng(0)
    pngs = [encode_image(render_like(rng)) for _ in range(20)]  # a pool: encoding 224px PNGs is slow
    counts = {}
    for s in range(0, samples, per_shard):
        name = SHARD_PATTERN.format(s // per_shard)
        with ShardWriter(root / name) as w:
            for i in range(s, min(samples, s + per_shard)):
                uid = f"obj{i:06d}"
                meta = SampleMeta(uid=uid, corpus="bench", label="c", label_index=i % 55, source=uid,
                                  views=[[e, a, 1.0] for e, a in VIEWS], points=8192)
                pts = rng.standard_normal((8192, 3)).astype(np.float32) / 4
                feats = rng.standard_normal((len(VIEWS), 512)).astype(np.float32)
                sample = encode_sample(make_key("bench", uid), pts, meta, imgfeat={"vitb32": feats})
                for v in range(len(VIEWS)):
                    sample[f"rgb.{v}.png"] = pngs[int(rng.integers(len(pngs)))]
                w.write(sample)
        counts[name] = min(per_shard, samples - s)
    ShardIndex(corpus="bench", settings={}, labels=["c"], shards=counts).save(root)
    return root


def bare_read(urls: list[str]) -> tuple[int, int]:
    """Samples and bytes of a plain tarfile pass reading every member."""
    keys, nbytes, last = 0, 0, None
    for url in urls:
        with tarfile.open(url, mode="r|") as tar:
            for member in tar:
                data = tar.extractfile(member).read()
                nbytes += len(data)
                key = member.name.split(".", 1)[0]
                if key != last:
                    keys, last = keys + 1, key
    return keys, nbytes


def time_bare(urls: list[str], passes: int) -> float:
    t, n = time.perf_counter(), 0
    for _ in range(passes):
        n += bare_read(urls)[0]
    return n / (time.perf_counter() - t)


def time_stream(root: Path, samples: int, batch: int, workers: int, imgfeat: bool, warmup: int) -> float:
    """Samples/s of the stream over ``samples`` samples after ``warmup`` batches (the shuffle buffer's fill)."""
    return run_stream(root, samples, batch, workers, imgfeat, warmup)[0]


def run_stream(root: Path, samples: int, batch: int, workers: int, imgfeat: bool, warmup: int) -> tuple[float, dict]:
    """:func:`time_stream`'s samples/s, and the stream's counters (``PretrainStream.stats()``: samples read, ...)."""
    cfg = DataConfig(shards=[str(root)], points=1024, workers=workers, shuffle_buffer=SHUFFLE_BUFFER,
                     imgfeat_tag="vitb32" if imgfeat else "", image_size=224)
    stream = PretrainStream(cfg, rank=0, world_size=1, seed=0, batch_size=batch, reseed_every=10**6)
    steps = warmup + samples // batch
    done = 0
    for batch_ in stream:
        if stream.step == warmup:
            t = time.perf_counter()
        elif stream.step > warmup:
            done += len(batch_["key"])
        if stream.step == steps:
            break
    return done / (time.perf_counter() - t), stream.stats()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=600, help="samples written")
    ap.add_argument("--passes", type=int, default=6, help="timed samples = passes x samples (steady state: >> shuffle buffer)")
    ap.add_argument("--per-shard", type=int, default=100)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--image-samples", type=int, default=200, help="samples per timed pass of the RGB-decoding loader")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_shards(Path(tmp), args.samples, args.per_shard)
        urls = [str(root / n) for n in sorted(ShardIndex.load(root).shards)]
        _, nbytes = bare_read(urls)  # warm the page cache for both
        bare, feat, image = [], [], []
        # The clock starts once the shuffle buffer is full (2 samples read per sample handed
        # out until then); that fill happens once per lane and reseed segment (every
        # reseed_every steps: ~1000 extra samples per 128k at batch 256 and 500 steps).
        warmup = (-(-SHUFFLE_BUFFER // args.batch) + 1) * max(1, args.workers)  # each worker's lane fills its own
        for _ in range(args.repeats):  # interleaved: load drifts on a shared machine hit both alike
            bare.append(time_bare(urls, args.passes))
            feat.append(time_stream(root, args.passes * args.samples, args.batch, args.workers, True, warmup))
            image.append(time_stream(root, args.image_samples, args.batch, args.workers, False, warmup))
    med = {k: statistics.median(v) for k, v in (("bare", bare), ("imgfeat", feat), ("image", image))}
    print(json.dumps({
        "benchmark": "loader_vs_bare_tar_read",
        "samples_written": args.samples,
        "samples_timed": args.passes * args.samples,
        "shuffle_buffer": SHUFFLE_BUFFER,
        "timed_after_warmup_batches": warmup,
        "bytes_per_sample": round(nbytes / args.samples),
        "batch": args.batch,
        "workers": args.workers,
        "repeats": args.repeats,
        "bare_samples_per_s": {"median": round(med["bare"], 1), "runs": [round(x, 1) for x in bare]},
        "stream_imgfeat_samples_per_s": {"median": round(med["imgfeat"], 1), "runs": [round(x, 1) for x in feat]},
        "stream_image_samples_per_s": {"median": round(med["image"], 1), "runs": [round(x, 1) for x in image]},
        "ratio_imgfeat_vs_bare": round(med["imgfeat"] / med["bare"], 3),
        "ratio_image_vs_bare": round(med["image"] / med["bare"], 3),
        "target_ratio_imgfeat": 0.8,
        "note": "bare = tarfile reading every member; the stream parses tar headers itself and seeks over "
                "members it does not use (RGB when imgfeat is read), then decodes points+imgfeat+meta",
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
    }, indent=1))


if __name__ == "__main__":
    main()
