"""The render job's control plane at corpus scale: listing + planning, writing ``plan.json``, the
resume check over finished shards, and the loader's start, for virtual corpora of 10^5-10^7
objects (a listing generator: no meshes, no rendering).

    python tests/benchmarks/bench_plan.py [--sizes 100000 1000000 10000000] [--shard-size 256]

Each size runs in a fresh process, so its peak memory (``ru_maxrss``) is its own. The resume
check and the loader's start run over ``--finished`` shards (default 40,000): that many empty
tars and ``parts/`` records are written once into a temporary folder. Prints one JSON line per
size, then a summary line with the growth factor of each figure between sizes (1.0 per 10x =
linear) against the targets (10^7 objects planned in under 120 s and 4 GiB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def virtual_listing(n: int, classes: int = 1156):
    """``n`` ObjectRefs whose uids cluster by class, as ShapeNet's and Objaverse-LVIS's do (one
    label string per class, as a corpus reader's label list gives)."""
    from c2p.corpora import ObjectRef

    per = max(1, n // classes)
    names = [f"class{c}" for c in range(n // per + 1)]
    return [ObjectRef("virt", f"c{i // per:04d}-{i:09d}", names[i // per], i // per, f"/data/virt/{i:09d}.glb") for i in range(n)]


def measure(n: int, shard_size: int, finished: int, scratch: Path) -> dict:
    from c2p.config.core import load_config
    from c2p.config.render import RenderJobConfig
    from c2p.sharddir import ShardDir
    from c2p.shards.output import completed_shards
    from c2p.shards.plan import make_plan
    from c2p.shards.record import read_plan_record, write_plan_record

    out: dict = {"objects": n, "shard_size": shard_size}
    t = time.perf_counter()
    refs = virtual_listing(n)
    out["listing_s"] = round(time.perf_counter() - t, 3)
    out["rss_after_listing_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # where memory goes: the refs
    labels = sorted({r.label for r in refs}, key=lambda l: int(l[5:]))
    cfg = load_config(RenderJobConfig, None, [f"corpus.root={scratch}", f"out={scratch / 'out'}", f"job.shard_size={shard_size}"])
    t = time.perf_counter()
    plan = make_plan(cfg, refs, [], labels)
    out["plan_s"] = round(time.perf_counter() - t, 3)
    out["shards"] = len(plan.shards)
    out["rss_after_plan_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    (scratch / "out").mkdir(exist_ok=True)
    t = time.perf_counter()
    path = write_plan_record(scratch / "out", plan)
    out["write_plan_s"] = round(time.perf_counter() - t, 3)
    out["plan_json_mib"] = round(path.stat().st_size / 2**20, 2)
    out["uid_list_mib"] = round(sum(p.stat().st_size for p in (scratch / "out" / "generations").iterdir()) / 2**20, 1)
    t = time.perf_counter()
    json.loads(path.read_text())
    out["read_plan_s"] = round(time.perf_counter() - t, 3)

    # The resume check over `finished` complete shards (their parts/ records carry their generation's fingerprint).
    done_dir = ShardDir(scratch / f"done-{n}")
    done_dir.parts.mkdir(parents=True, exist_ok=True)
    for spec in plan.shards[:finished]:
        done_dir.shard(spec.name).write_bytes(b"")
        done_dir.part(spec.name).write_text(json.dumps({"fingerprint": spec.fingerprint, "name": spec.name, "samples": len(spec.refs)}))
    t = time.perf_counter()
    done = completed_shards(done_dir.root, plan)
    out["resume_check_s"] = round(time.perf_counter() - t, 3)
    out["resume_check_shards"] = len(done)
    del done
    # Growth: the same listing plus 1% new objects, planned against the recorded plan (reads and
    # re-keys generation 0's uid list, keeps its shards, cuts the new objects into new shards).
    grown = refs + [type(refs[0])("virt", f"new-{i:09d}", refs[0].label, 0, f"/data/virt/new-{i:09d}.glb") for i in range(max(1, n // 100))]
    del refs, plan
    t = time.perf_counter()
    plan2 = make_plan(cfg, grown, [], labels, read_plan_record(scratch / "out"))
    out["grow_plan_s"] = round(time.perf_counter() - t, 3)
    out["grow_new_shards"] = len(plan2.shards) - out["shards"]
    out["rss_after_grow_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def loader_start(scratch: Path, shards: int) -> dict:
    """``resolve_shards`` + PretrainStream construction over a directory of ``shards`` tars."""
    from c2p.config.pretrain import DataConfig
    from c2p.data import PretrainStream
    from c2p.schema import ShardIndex
    from c2p.sharddir import shard_name

    root = scratch / f"loader-{shards}"
    root.mkdir(exist_ok=True)
    counts = {}
    for i in range(shards):
        (root / shard_name(i)).write_bytes(b"")
        counts[shard_name(i)] = 256
    ShardIndex(corpus="virt", settings={}, labels=["c"], shards=counts, total_objects=256 * shards).save(root)
    t = time.perf_counter()
    PretrainStream(DataConfig(shards=[str(root)], workers=0), rank=0, world_size=8, seed=0, batch_size=32)
    return {"loader_shards": shards, "loader_start_s": round(time.perf_counter() - t, 3),
            "index_json_mib": round((root / "index.json").stat().st_size / 2**20, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    p.add_argument("--shard-size", type=int, default=256)
    p.add_argument("--finished", type=int, default=40_000, help="finished shards for the resume check and the loader")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    p.add_argument("--scratch", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one is not None:  # a child: one size, its own peak memory
        print(json.dumps(measure(a.one, a.shard_size, a.finished, Path(a.scratch))))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="c2p-bench-plan-") as tmp:
        for n in a.sizes:
            r = subprocess.run([sys.executable, __file__, "--one", str(n), "--shard-size", str(a.shard_size), "--finished",
                                str(a.finished), "--scratch", tmp], capture_output=True, text=True, env=dict(os.environ))
            if r.returncode:
                raise SystemExit(f"size {n} failed:\n{r.stderr[-3000:]}")
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
        loader = loader_start(Path(tmp), a.finished)
    growth = {}
    for key in ("listing_s", "plan_s", "write_plan_s", "grow_plan_s", "plan_json_mib", "peak_rss_mib"):
        growth[key] = [round(rows[i + 1][key] / rows[i][key], 2) if rows[i][key] else None for i in range(len(rows) - 1)]
    last = rows[-1]
    print(json.dumps({
        "benchmark": "render_plan_scale", "sizes": a.sizes, "growth_per_10x": growth, **loader,
        "largest": {"objects": last["objects"], "listing_plus_plan_s": round(last["listing_s"] + last["plan_s"], 2),
                    "peak_rss_mib": last["peak_rss_mib"]},
        "targets": {"listing_plus_plan_s": 120, "peak_rss_mib": 4096},
        "meets_targets": last["listing_s"] + last["plan_s"] < 120 and last["peak_rss_mib"] < 4096,
    }))


if __name__ == "__main__":
    main()
