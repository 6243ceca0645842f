"""The end-to-end demo: the paper's table in miniature, on one CPU machine, in minutes.

    c2p-demo                                 # configs/demo/demo.yaml of this checkout
    c2p-demo run.name=demo2 pretrain.steps=60 ...
    c2p-demo --stages world,render           # some stages only

A synthetic world, its renders, a small CLIP trained by open_clip_train, CLIP2Point
pre-training on 2 local DeepSpeed ranks (and its ablation), zero-shot, few-shot and retrieval
on held-out objects, then ``<run.dir>/<run.name>/report.md`` with the table, the paper's claims
checked on it, and plots (stages: :mod:`c2p.demo`). Every config a stage hands to a command
is built and checked before anything is written. Each stage logs to ``<run>/logs/<stage>.log``;
a finished stage is not redone when the demo is run again with the same ``run.name`` (delete
the run directory to start over). Exit status: 0 done, 1 a stage failed (its log is named),
2 bad arguments or config (nothing written).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from c2p.cli.base import command_parser, run_command
from c2p.config.demo import DemoConfig
from c2p.demo import STAGE_NAMES, load_demo, run_demo, select_stages

# The demo config names the configs it builds on (configs.pretrain, configs.downstream) relative
# to itself, so it is read where it lies in a checkout; the installed command looks in the
# working directory, and launch/demo.py passes the one beside it.
DEFAULT_CONFIG = Path("configs") / "demo" / "demo.yaml"


def build_parser(default_config: str | Path = DEFAULT_CONFIG) -> argparse.ArgumentParser:
    p = command_parser(__doc__, DemoConfig)
    p.set_defaults(config=str(default_config))
    p.add_argument("--stages", default=None, help=f"comma-separated stages to run (default all: {','.join(STAGE_NAMES)})")
    return p


def body(args: argparse.Namespace) -> None:
    plan = load_demo(args.config, args.overrides)  # every stage's config, checked: nothing written yet
    run_demo(plan, select_stages(args.stages))


def main(argv: Sequence[str] | None = None, default_config: str | Path = DEFAULT_CONFIG) -> int:
    # WARNING: the progress lines are the demo's output; the stages' own logs go to <run>/logs/.
    return run_command(build_parser(default_config), body, argv, log_level=logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
