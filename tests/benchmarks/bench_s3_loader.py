"""Loader throughput from object storage vs local disk: the same shards, side by side in one run.

Writes bench_loader.py's realistic shard directory (8192 float16 points, 10 PNG renders of
224x224, imgfeat [10,512], meta.json), uploads it to a SeaweedFS server started here on
127.0.0.1 (tests/s3server.py), then alternates, ``repeats`` times, the PretrainStream over the
local folder and over ``s3://bench/shards``: with image features (``imgfeat``) and with one PNG
decode per sample (``image``). Timed from the moment the shuffle buffer is full (bench_loader.py
says why), in one process (``workers=0``), so the ratio is what streaming over HTTP costs per
sample on one core. Target: s3/local >= 0.8. Prints one JSON object with medians and ratios.

    python tests/benchmarks/bench_s3_loader.py [--samples 600 --passes 3 --repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the S3 server of the test suite

import torch  # noqa: E402
from bench_loader import SHUFFLE_BUFFER, time_stream, write_shards  # noqa: E402
from s3server import SeaweedS3  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=600, help="samples written")
    ap.add_argument("--passes", type=int, default=3, help="timed samples of the imgfeat stream = passes x samples")
    ap.add_argument("--per-shard", type=int, default=100)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--image-samples", type=int, default=200, help="timed samples of the PNG-decoding stream")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="c2p-bench-s3-") as tmp:
        (Path(tmp) / "shards").mkdir()
        root = write_shards(Path(tmp) / "shards", args.samples, args.per_shard)
        server = SeaweedS3(Path(tmp) / "seaweed").start()
        try:
            os.environ.update(server.env)
            url = server.bucket("bench") + "/shards"
            server.upload_dir(root, url)
            nbytes = sum(p.stat().st_size for p in root.glob("*.tar"))
            warmup = -(-SHUFFLE_BUFFER // args.batch) + 1
            runs: dict[str, list[float]] = {k: [] for k in ("local_imgfeat", "s3_imgfeat", "local_image", "s3_image")}
            for _ in range(args.repeats):  # interleaved: load drifts on a shared machine hit both alike
                for where, spec in (("local", str(root)), ("s3", url)):
                    runs[f"{where}_imgfeat"].append(time_stream(spec, args.passes * args.samples, args.batch, 0, True, warmup))
                    runs[f"{where}_image"].append(time_stream(spec, args.image_samples, args.batch, 0, False, warmup))
        finally:
            server.stop()
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(json.dumps({
        "benchmark": "loader_s3_vs_local",
        "server": "SeaweedFS weed mini on 127.0.0.1 (loopback: no network latency or bandwidth limit)",
        "samples_written": args.samples,
        "mb_per_sample": round(nbytes / args.samples / 1e6, 3),
        "samples_timed_imgfeat": args.passes * args.samples,
        "samples_timed_image": args.image_samples,
        "batch": args.batch,
        "repeats": args.repeats,
        **{f"{k}_samples_per_s": {"median": round(med[k], 1), "runs": [round(x, 1) for x in v]} for k, v in runs.items()},
        "ratio_imgfeat_s3_vs_local": round(med["s3_imgfeat"] / med["local_imgfeat"], 3),
        "ratio_image_s3_vs_local": round(med["s3_image"] / med["local_image"], 3),
        "target_ratio": 0.8,
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
    }, indent=1))


if __name__ == "__main__":
    main()
