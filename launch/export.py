"""Export the depth tower of a pre-training run as one fp32 safetensors file (no DeepSpeed needed
to read it): what fine-tuning and evaluation load.

    python launch/export.py runs/tiny                       # newest committed checkpoint → runs/tiny/export/
    python launch/export.py runs/tiny --tag step_00000020 --out /tmp/tower
    python launch/export.py runs/vitb32 --cluster slurm --partition cpu --mem 64G   # big runs: on a node

Runs in this process for ``--cluster local`` (one process; consolidating ZeRO shards needs no
rendezvous), as a one-task SLURM job for ``--cluster slurm``. The run directory is checked
before anything is submitted. Exit status: 0 done (or submitted), 1 the export failed,
2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from launch.common import ClusterOptions, JobFailedError, LaunchError, add_cluster_args, launch

TARGET = "launch.export:export_job"


def export_job(spec: dict[str, Any]) -> str:
    """The job body: ``spec = {"run_dir", "tag" (None: newest committed), "out" (None: <run>/export)}``."""
    from c2p.train.pretrain import export_run

    return str(export_run(spec["run_dir"], spec.get("tag"), spec.get("out")))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Export a pre-training run's depth tower (fp32 safetensors).")
    p.add_argument("run_dir", help="run directory (<run.dir>/<run.name>) holding checkpoints/")
    p.add_argument("--tag", default=None, help="checkpoint tag, e.g. step_00000020 (default: newest committed)")
    p.add_argument("--out", default=None, help="output directory (default: <run_dir>/export)")
    add_cluster_args(p, job_name="c2p-export")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run_dir = Path(args.run_dir).expanduser().absolute()
    try:
        opts = ClusterOptions.from_args(args)
        if not (run_dir / "checkpoints").is_dir():
            raise LaunchError(f"run_dir {str(run_dir)!r}: expected a pre-training run directory with checkpoints/ (none there)")
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    spec = {"run_dir": str(run_dir), "tag": args.tag, "out": str(Path(args.out).absolute()) if args.out else None}
    if opts.cluster == "local" and not args.dry_run:
        try:
            print(export_job(spec), flush=True)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
    try:
        # Logs beside the run's other job logs; nothing else of the run is touched.
        result = launch(TARGET, spec, opts, run_dir, dry_run=args.dry_run, wait_for_result=args.wait)
    except JobFailedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if isinstance(result, str):
        print(result, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
