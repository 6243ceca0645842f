"""tests/gpu/gpu_check.py on the CPU at its smallest sizes: every line of the GPU check runs in CI
(depth parity, llvmpipe mesh parity through the reference subprocess, a bf16 ZeRO-2 step through
DeepSpeed, the loader from imgfeat shards), so the one GPU run it is written for does not fail on
a typo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_on_cpu_at_the_smallest_sizes(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    r = subprocess.run([sys.executable, str(REPO / "tests" / "gpu" / "gpu_check.py"), "--device", "cpu", "--smallest",
                        "--budget-s", "10", "--out", str(tmp_path)], capture_output=True, text=True, env=env, cwd=REPO,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = r.stdout[r.stdout.index("\ncheck "):].splitlines()
    names = [line.split("  ")[0].strip() for line in table[2:]]
    assert names == ["ceilings", "depth parity", "depth speed", "mesh device", "mesh parity", "mesh speed",
                     "step bf16 ZeRO-2", "loader", "total"], table
    assert all("  yes  " in line for line in table[2:]), table
    out = json.loads((tmp_path / "results.json").read_text())
    plan, results = out["plan"], out["results"]
    assert plan["step"]["flops"] == plan["step"]["flops_per_sample"] * plan["step"]["batch"] > 0
    assert results["step_samples_per_s"] > 0 and set(results) >= {"depth", "mesh", "step", "loader"}
    assert "MFU" in results["step"]["rows"][0][1] and "llvmpipe" in results["mesh"]["rows"][0][1]
    assert (tmp_path / "plan.json").is_file()
