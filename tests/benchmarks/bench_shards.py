"""Render-job throughput: objects/s with 1 and 2 Ray workers, and the time spent outside rendering.

    python tests/benchmarks/bench_shards.py [--per-class 3] [--repeats 3] [--image-size 224] [--views 10]

A synthetic corpus (ShapeNet layout, textured meshes) is rendered into fresh output
directories by the real job on a local Ray cluster with ``num_cpus=W`` (W = 1, 2); one
warm-up run per W starts the workers (imports, EGL context) first, as a long job amortises
that. Per run:

- ``objects_per_s``: planned objects / wall time of the job (listing, plan, tasks, index,
  previews — everything but starting Ray);
- ``outside_rendering``: 1 - (object work) / (W x wall), where object work is the tasks'
  summed load + point sampling + render time: the share of worker time spent on encoding,
  writing, scheduling and the driver. Target < 0.15.

Prints one JSON object: medians over the repeats per W, the stage breakdown, and the
2-worker/1-worker speed-up (the baseline is the 1-worker run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from c2p.config.core import load_config  # noqa: E402
from c2p.config.render import RenderJobConfig  # noqa: E402


def run_once(root: Path, out: Path, workers: int, args: argparse.Namespace, limit: int = 0) -> dict:
    from shards.job import run_render_job

    cfg = load_config(RenderJobConfig, None, [f"corpus.limit={limit}",
        f"corpus.root={root}", f"out={out}", "corpus.name=synthetic", f"views.set={args.views}",
        f"views.image_size={args.image_size}", f"job.shard_size={args.shard_size}", "job.progress=false",
        "job.previews=0", f"job.points={args.points}", f"job.max_in_flight={2 * workers}",
    ])
    s = run_render_job(cfg)
    work = sum(s["timings"][k] for k in ("load", "points", "render"))
    capacity = workers * s["wall_s"]
    return {
        "wall_s": s["wall_s"],
        "objects_per_s": s["objects"] / s["wall_s"],
        "outside_rendering": 1.0 - work / capacity,
        "share": {k: s["timings"][k] / capacity for k in ("load", "points", "render", "encode", "write")},
        "samples": s["samples"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-class", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--views", default="10", choices=["10", "6"])
    p.add_argument("--points", type=int, default=8192)
    p.add_argument("--shard-size", type=int, default=6)
    args = p.parse_args()

    import ray

    from c2p.corpora.synthetic import write_synthetic

    tmp = Path(tempfile.mkdtemp(prefix="bench_shards_"))
    try:
        root = write_synthetic(tmp / "corpus", layout="shapenet", per_class=args.per_class, seed=0)
        results = {}
        for workers in (1, 2):
            ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
            try:
                # one shard per worker: starts the workers (imports, EGL context) before timing
                run_once(root, tmp / f"warmup{workers}", workers, args, limit=workers * args.shard_size)
                runs = [run_once(root, tmp / f"w{workers}-{r}", workers, args) for r in range(args.repeats)]
            finally:
                ray.shutdown()
            results[workers] = {
                "objects_per_s": statistics.median(r["objects_per_s"] for r in runs),
                "wall_s": statistics.median(r["wall_s"] for r in runs),
                "outside_rendering": statistics.median(r["outside_rendering"] for r in runs),
                "share_of_worker_time": {k: round(statistics.median(r["share"][k] for r in runs), 4) for k in runs[0]["share"]},
                "runs": [round(r["objects_per_s"], 3) for r in runs],
            }
        out = {
            "benchmark": "shards render job",
            "objects": runs[0]["samples"],
            "settings": {"views": args.views, "image_size": args.image_size, "points": args.points, "shard_size": args.shard_size,
                         "repeats": args.repeats, "cpus": os.cpu_count()},
            "workers_1": results[1],
            "workers_2": results[2],
            "speedup_2_vs_1": results[2]["objects_per_s"] / results[1]["objects_per_s"],
            "outside_rendering_target": 0.15,
            "outside_rendering_met": {w: results[w]["outside_rendering"] < 0.15 for w in (1, 2)},
        }
        print(json.dumps(out, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
