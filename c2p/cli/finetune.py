"""Few-shot or fully supervised training of the Gated Dual-Path Adapter, one run or a K x seed sweep.

    c2p-finetune --task fewshot --shots 16 --seed 0 --config configs/downstream/fewshot_modelnet40.yaml \\
        --root data/ModelNet40 --depth-tower runs/vitb32/export/depth_tower.safetensors
    c2p-finetune --task fewshot --shots 1 2 4 8 16 --seed 0 1 2 --cluster slurm ...   # one job array
    c2p-finetune --task supervised --seed 0 1 2 ...
    c2p-finetune --collect ...      # rebuild the sweep table/plot from finished array elements

``--cluster local`` (the default where no SLURM is configured) runs the whole sweep in this
process, computing the frozen towers' view features once; ``--cluster slurm`` submits one job
array (one element per (K, seed), each running ``c2p.eval.fewshot:run_one``; they share the
feature cache) and, when waiting, writes the sweep table. Reports: ``<run>/eval/fewshot/k<K>/seed<S>/``,
sweep table and plot in ``<run>/eval/fewshot/`` (``supervised/`` for --task supervised).
Exit status: 0 done, 1 a run failed, 2 bad arguments, config or inputs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from c2p.cli.base import command_parser, run_command
from c2p.cli.downstream import add_downstream_args, check_inputs, downstream_overrides
from c2p.cluster import ClusterOptions, add_cluster_args, launch_array
from c2p.config import ConfigError, load_config
from c2p.config.downstream import DownstreamConfig
from c2p.corpora import CorpusError
from c2p.eval.errors import EvalError

TARGET = "c2p.eval.fewshot:run_one"


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(__doc__, DownstreamConfig)
    p.add_argument("--task", choices=["fewshot", "supervised"], help="finetune.task")
    p.add_argument("--shots", type=int, nargs="+", metavar="K", help="shots per class, one or more (finetune.shots)")
    p.add_argument("--seed", "--seeds", dest="seeds", type=int, nargs="+", metavar="S", help="seeds, one or more (finetune.seeds)")
    add_downstream_args(p)
    p.add_argument("--collect", action="store_true", help="only build the sweep table/plot from finished runs")
    p.add_argument("--json", action="store_true", help="print the sweep rows as one JSON line")
    add_cluster_args(p, job_name="c2p-finetune")
    return p


def build_config(args: argparse.Namespace) -> DownstreamConfig:
    """Config from --config, the named flags and the overrides; raises ConfigError."""
    flags = {
        "finetune.task": args.task,
        "finetune.shots": f"[{','.join(map(str, args.shots))}]" if args.shots else None,
        "finetune.seeds": f"[{','.join(map(str, args.seeds))}]" if args.seeds else None,
    }
    cfg = load_config(DownstreamConfig, args.config, downstream_overrides(args, flags))
    check_inputs(cfg)
    if cfg.adapter.paths in ("both", "depth") and not cfg.encoder.depth_tower:
        raise ConfigError("encoder.depth_tower", "", f"an exported depth tower for adapter.paths={cfg.adapter.paths!r} (or adapter.paths=clip)")
    return cfg


def body(args: argparse.Namespace) -> int:
    from c2p.eval.fewshot import collect_sweep, run_sweep, sweep_configs
    from c2p.eval.report import eval_dir

    cfg = build_config(args)
    opts = ClusterOptions.from_args(args)
    if args.collect:
        sweep = collect_sweep(cfg)
    elif opts.cluster == "local" and not args.dry_run:
        sweep = run_sweep(cfg)
    else:
        cfgs = sweep_configs(cfg)
        names = [f"k{c.finetune.shots[0] if cfg.finetune.task == 'fewshot' else 'all'}-seed{c.finetune.seeds[0]}" for c in cfgs]
        wait = args.wait if args.wait is not None else True
        launch_array(TARGET, cfgs, opts, eval_dir(cfg) / cfg.finetune.task / "logs", names=names, dry_run=args.dry_run, wait_for_result=wait)
        if args.dry_run or not wait:
            if not args.dry_run:
                print(f"when the array is done: c2p-finetune --collect {' '.join(args.argv)}")
            return 0
        sweep = collect_sweep(cfg)  # each element wrote its results.json; the table is built from those
    if args.json:
        print(json.dumps({"rows": sweep["rows"], "report": sweep["report"]}, default=str))
    else:
        print(Path(sweep["report"]["markdown"]).read_text() + f"report: {sweep['report']['markdown']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    parser.set_defaults(argv=argv)  # echoed in the --collect hint
    # EvalError, CorpusError: bad inputs found while reading them
    return run_command(parser, body, argv, refused=(EvalError, CorpusError))


if __name__ == "__main__":
    sys.exit(main())
