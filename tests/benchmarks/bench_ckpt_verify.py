"""What trusting a checkpoint costs: hashing a tag at save, verifying it at resume, and loading
its files weights-only instead of with pickle.

    python tests/benchmarks/bench_ckpt_verify.py [--mb 1024] [--ranks 2] [--out /tmp/bench_ckpt]

Writes a tag of ``--ranks`` optimizer-state files plus one model-states file, ``--mb`` MB in all
(1024: about the fp32 ZeRO state of a ViT-B/32 depth tower, 88 M parameters x 12 bytes), each
file a ``torch.save``\\d dict of fp32 tensors as DeepSpeed writes them. Times, in this process:
``hash_own_files`` of each rank right after its file is written (the save's extra work, page
cache hot; ranks run in parallel in a job, so the save pays the slowest rank), the marker's
``verify_files`` over the whole tag from a cold-ish cache (after ``posix_fadvise(DONTNEED)``),
and ``torch.load`` of one optimizer file with ``weights_only=False`` vs inside
:func:`c2p.train.ckptload.weights_only_loads`. Prints one JSON object (seconds, GB/s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=1024)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--out", default="/tmp/bench_ckpt_verify")
    args = p.parse_args()

    import torch

    from c2p.train.ckptload import weights_only_loads
    from c2p.train.ckptverify import build_manifest, hash_own_files, verify_files

    tag = Path(args.out) / "step_00000001"
    shutil.rmtree(tag.parent, ignore_errors=True)
    tag.mkdir(parents=True)
    model_mb = args.mb // 4  # fp32 module vs 3x its size of master weights + two moments
    per_rank = (args.mb - model_mb) // args.ranks
    floats = lambda mb: torch.randn(mb * 2**20 // 4 // 8, 8)  # noqa: E731
    hash_s = []
    for r in range(args.ranks):
        torch.save({"optimizer_state_dict": {"state": {0: {"exp_avg": floats(per_rank // 3), "exp_avg_sq": floats(per_rank // 3)}},
                                             "single_partition_of_fp32_groups": [floats(per_rank // 3)]}},
                   tag / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt")
        if r == 0:
            torch.save({"module": {"w": floats(model_mb)}}, tag / "mp_rank_00_model_states.pt")
        t0 = time.perf_counter()
        part = hash_own_files(tag, r, args.ranks)
        hash_s.append(time.perf_counter() - t0)
    manifest = build_manifest(tag, [])
    total = sum(f["size"] for f in manifest.values())
    for f in tag.iterdir():  # drop the page cache where the kernel lets us: resume reads from disk
        with open(f, "rb") as fh:
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    t0 = time.perf_counter()
    problems = verify_files(tag, manifest)
    verify_s = time.perf_counter() - t0
    optim = tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    t0 = time.perf_counter()
    torch.load(optim, map_location="cpu", weights_only=False)
    pickle_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with weights_only_loads():
        torch.load(optim, map_location="cpu", weights_only=False)
    safe_s = time.perf_counter() - t0
    print(json.dumps({
        "tag_mb": round(total / 1e6, 1), "ranks": args.ranks, "problems": len(problems), "own_files": len(part),
        "save_hash_s_per_rank": [round(s, 3) for s in hash_s], "save_hash_gb_per_s": round(total / sum(hash_s) / 1e9, 2),
        "resume_verify_s": round(verify_s, 3), "resume_verify_gb_per_s": round(total / verify_s / 1e9, 2),
        "optim_file_mb": round(optim.stat().st_size / 1e6, 1), "load_pickle_s": round(pickle_s, 3),
        "load_weights_only_s": round(safe_s, 3),
    }))
    shutil.rmtree(tag.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
