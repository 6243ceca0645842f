"""Export the depth tower of a pre-training run as one fp32 safetensors file (no DeepSpeed needed
to read it): what fine-tuning and evaluation load.

    c2p-export runs/tiny                       # newest committed checkpoint → runs/tiny/export/
    c2p-export runs/tiny --tag step_00000020 --out /tmp/tower
    c2p-export runs/vitb32 --cluster slurm --partition cpu --mem 64G   # big runs: on a node

Runs in this process for ``--cluster local`` (one process; consolidating ZeRO shards needs no
rendezvous), as a one-task SLURM job for ``--cluster slurm``. The run directory is checked
before anything is submitted. Exit status: 0 done (or submitted), 1 the export failed,
2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from c2p.cli.base import command_parser, print_result, run_command
from c2p.cluster import ClusterOptions, JobFailedError, LaunchError, add_cluster_args, launch

TARGET = "c2p.train.export:export_job"


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(__doc__)
    p.add_argument("run_dir", help="run directory (<run.dir>/<run.name>) holding checkpoints/")
    p.add_argument("--tag", default=None, help="checkpoint tag, e.g. step_00000020 (default: newest committed)")
    p.add_argument("--out", default=None, help="output directory (default: <run_dir>/export)")
    add_cluster_args(p, job_name="c2p-export")
    return p


def body(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir).expanduser().absolute()
    opts = ClusterOptions.from_args(args)
    if not (run_dir / "checkpoints").is_dir():
        raise LaunchError(f"run_dir {str(run_dir)!r}: expected a pre-training run directory with checkpoints/ (none there)")
    spec = {"run_dir": str(run_dir), "tag": args.tag, "out": str(Path(args.out).absolute()) if args.out else None}
    if opts.cluster == "local" and not args.dry_run:
        from c2p.train.export import export_job

        try:
            print_result(export_job(spec))
        except (FileNotFoundError, ValueError) as e:  # no committed tag, a damaged one: the export failed
            raise JobFailedError(str(e)) from e
        return 0
    # Logs beside the run's other job logs; nothing else of the run is touched.
    print_result(launch(TARGET, spec, opts, run_dir, dry_run=args.dry_run, wait_for_result=args.wait))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), body, argv)


if __name__ == "__main__":
    sys.exit(main())
