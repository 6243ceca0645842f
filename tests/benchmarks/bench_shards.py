"""Render-job throughput: objects/s with 1 and 2 Ray workers, and the time spent outside rendering.

    python tests/benchmarks/bench_shards.py [--per-class 2] [--repeats 3] [--subdivide 2] [--image-size 224] [--views 10]

A synthetic corpus (ShapeNet layout, textured meshes) is rendered into fresh output
directories by the real job on a local Ray cluster with ``num_cpus=W`` (W = 1, 2); one
warm-up run per W starts the workers (imports, EGL context) first, as a long job amortises
that. Per run:

- ``objects_per_s``: planned objects / wall time of the job (listing, plan, tasks, index —
  everything but starting Ray; previews off);
- ``outside_rendering``: 1 - render / (W x wall), with render the tasks' summed
  ``MeshRenderer.render`` time: the share of worker time spent on anything else (loading,
  point sampling, PNG encoding, writing, scheduling, the driver);
- ``outside_object_work``: the same with loading and point sampling counted as work, so
  what remains is encoding, writing, scheduling and the driver: the overhead the render-job
  issue bounds (target < 0.15);
- ``share_of_worker_time``: each stage's share (the rest, ``other``, is Ray scheduling, worker
  idle time and the driver).

The synthetic meshes are low-poly (~800 triangles), so rendering them is cheap next to PNG
encoding; by default every triangle is split into 16 (``--subdivide 2``: ~12k triangles, UVs
and texture kept) to approach real ShapeNet meshes (10^4-10^5 triangles); ``--subdivide 0``
renders the originals.

Each W runs the job twice per repeat, interleaved: with the task's writer thread (the default,
``job.write_thread=true``: samples are encoded and written while the next object renders) and
without it (the baseline: encode and write in line). With the thread, encode and write time
overlaps rendering, so ``outside_object_work`` is the share of worker time the object pipeline
is stalled, not the encode+write CPU time (``share_of_worker_time`` still lists that).

Prints one JSON object: medians over the repeats per W and mode, the stage breakdown, the
thread/inline throughput ratio per W, and the 2-worker/1-worker speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

from c2p.config.core import load_config
from c2p.config.render import RenderJobConfig


def run_once(root: Path, out: Path, workers: int, args: argparse.Namespace, limit: int = 0, thread: bool = True) -> dict:
    from c2p.shards.job import run_render_job

    cfg = load_config(RenderJobConfig, None, [f"corpus.limit={limit}",
        f"corpus.root={root}", f"out={out}", "corpus.name=synthetic", f"views.set={args.views}",
        f"views.image_size={args.image_size}", f"job.shard_size={args.shard_size}", "job.progress=false",
        "job.previews=0", f"job.points={args.points}", f"job.max_in_flight={2 * workers}",
        f"job.write_thread={str(thread).lower()}",
    ])
    s = run_render_job(cfg)
    t = s["timings"]
    capacity = workers * s["wall_s"]
    share = {k: t[k] / capacity for k in ("load", "points", "render", "encode", "write")}
    share["other"] = 1.0 - sum(share.values())
    return {
        "wall_s": s["wall_s"],
        "objects_per_s": s["objects"] / s["wall_s"],
        "outside_rendering": 1.0 - t["render"] / capacity,
        "outside_object_work": 1.0 - (t["load"] + t["points"] + t["render"]) / capacity,
        "share": share,
        "samples": s["samples"],
    }


def summarize(runs: list[dict]) -> dict:
    """Medians over repeats of one (W, mode)."""
    return {
        "objects_per_s": statistics.median(r["objects_per_s"] for r in runs),
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "outside_rendering": statistics.median(r["outside_rendering"] for r in runs),
        "outside_object_work": statistics.median(r["outside_object_work"] for r in runs),
        "share_of_worker_time": {k: round(statistics.median(r["share"][k] for r in runs), 4) for k in runs[0]["share"]},
        "runs": [round(r["objects_per_s"], 3) for r in runs],
    }


def subdivide_corpus(root: Path, times: int) -> None:
    """Rewrite every model of a ShapeNet-layout corpus with each triangle split into 4^times (UVs
    and texture kept: loaded through the corpus reader, which resolves ShapeNet's ../images/)."""
    from trimesh.exchange.obj import export_obj

    from c2p.corpora import open_corpus

    corpus = open_corpus("synthetic", root, "all")
    for ref in corpus.list()[0]:
        mesh = corpus.load(ref).mesh
        for _ in range(times):
            mesh = mesh.subdivide()
        text, files = export_obj(mesh, include_texture=True, return_texture=True, mtl_name="model_normalized.mtl")
        obj = Path(ref.source)
        for name, data in files.items():
            (obj.parent / name).write_bytes(data)
        obj.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-class", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--views", default="10", choices=["10", "6"])
    p.add_argument("--points", type=int, default=8192)
    p.add_argument("--shard-size", type=int, default=7, help="28 objects -> 4 shards: no half-idle last round")
    p.add_argument("--subdivide", type=int, default=2, help="split each triangle into 4^K (0: the ~800-triangle originals)")
    args = p.parse_args()

    import ray

    from c2p.corpora.synthetic import write_synthetic

    tmp = Path(tempfile.mkdtemp(prefix="bench_shards_"))
    try:
        root = write_synthetic(tmp / "corpus", layout="shapenet", per_class=args.per_class, seed=0)
        if args.subdivide:
            subdivide_corpus(root, args.subdivide)
        results = {}
        for workers in (1, 2):
            ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
            try:
                # one shard per worker: starts the workers (imports, EGL context) before timing
                run_once(root, tmp / f"warmup{workers}", workers, args, limit=workers * args.shard_size)
                runs: dict[str, list[dict]] = {"thread": [], "inline": []}
                for r in range(args.repeats):  # interleaved, so drifting machine load hits both modes alike
                    for mode in runs:
                        runs[mode].append(run_once(root, tmp / f"w{workers}-{mode}-{r}", workers, args, thread=mode == "thread"))
            finally:
                ray.shutdown()
            results[workers] = {mode: summarize(rs) for mode, rs in runs.items()}
            results[workers]["thread_vs_inline"] = round(statistics.median(
                t["objects_per_s"] / i["objects_per_s"] for t, i in zip(runs["thread"], runs["inline"])), 3)
        out = {
            "benchmark": "shards render job",
            "objects": runs["thread"][0]["samples"],
            "settings": {"views": args.views, "image_size": args.image_size, "points": args.points, "shard_size": args.shard_size,
                         "subdivide": args.subdivide, "repeats": args.repeats, "cpus": os.cpu_count()},
            "workers_1": results[1],
            "workers_2": results[2],
            "speedup_2_vs_1": results[2]["thread"]["objects_per_s"] / results[1]["thread"]["objects_per_s"],
            "target_outside_object_work": 0.15,
            "outside_object_work_met": {w: {m: results[w][m]["outside_object_work"] < 0.15 for m in ("thread", "inline")} for w in (1, 2)},
            "outside_rendering_met": {w: {m: results[w][m]["outside_rendering"] < 0.15 for m in ("thread", "inline")} for w in (1, 2)},
        }
        print(json.dumps(out, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
