"""Zero-shot evaluation of a depth tower (or of CLIP's image tower, the PointCLIP-style baseline).

    c2p-evaluate --task zeroshot --config configs/downstream/zeroshot_modelnet40.yaml \\
        --root data/ModelNet40 --depth-tower runs/vitb32/export/depth_tower.safetensors \\
        [--cluster slurm|local] [--gpus-per-node 1 ...] [key=value ...]
    c2p-evaluate --task zeroshot --run runs/vitb32 --config ... --root ...   # that run's export; reports in runs/vitb32/eval/

Overrides are dotted keys of :class:`c2p.config.downstream.DownstreamConfig`
(``encoder.views=6``, ``data.classes=[...]``). The whole config and the inputs it names are
validated before anything is written or submitted. ``--cluster local`` (the default where no
SLURM is configured) runs in this process; ``--cluster slurm`` submits one job.
Reports go to ``<run.dir>/<run.name>/eval/zeroshot/``.

The suite: every protocol × dataset whose release is present, one table (markdown, JSON, CSV)::

    c2p-evaluate --suite configs/eval/suite.yaml --depth-tower runs/vitb32/export/depth_tower.safetensors \
        [roots.modelnet_h5=/data/modelnet40_ply_hdf5_2048 ...] [--cluster slurm]   # slurm: one job array, a cell per element
    c2p-evaluate --suite configs/eval/suite.yaml --collect ...   # the table from finished cells

``--depth-tower`` (``encoder.depth_tower``) may be an ``s3://bucket/key`` address in both forms:
the launcher downloads it to the local cache (:mod:`c2p.storage.cache`) to check it, and each job
or cell reads it from there (downloading again only when the object changed).

Overrides are then keys of :class:`c2p.config.evalsuite.SuiteConfig`; the table goes to
``<run.dir>/<run.name>/eval/suite/``.
Exit status: 0 done, 1 the evaluation failed, 2 bad arguments, config or inputs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from c2p.cli.base import command_parser, run_command
from c2p.cli.downstream import add_downstream_args, check_inputs, downstream_overrides
from c2p.cluster import ClusterOptions, add_cluster_args, launch
from c2p.config import load_config, to_yaml
from c2p.config.downstream import DownstreamConfig
from c2p.corpora import CorpusError
from c2p.eval.errors import EvalError

TARGETS = {"zeroshot": "c2p.eval.zeroshot:evaluate_zeroshot"}


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(__doc__, DownstreamConfig)
    p.add_argument("--task", choices=sorted(TARGETS), default="zeroshot")
    add_downstream_args(p, depth_help="; omit for CLIP's image tower")
    p.add_argument("--json", action="store_true", help="print the results as one JSON line")
    p.add_argument("--suite", metavar="YAML", help="run the evaluation suite of this file (configs/eval/suite.yaml); overrides are suite keys")
    p.add_argument("--collect", action="store_true", help="with --suite: only build the table from finished cells")
    add_cluster_args(p, job_name="c2p-eval")
    return p


def suite_body(args: argparse.Namespace) -> int:
    """``--suite``: plan (skipping absent releases, saying so), run the cells here or as one job
    array, print the table."""
    from c2p.cli.base import UsageError
    from c2p.cluster import launch_array
    from c2p.eval.suite import CELL_TARGET, collect_suite, load_suite, run_suite
    from c2p.preflight import check_encoder

    if args.root or args.corpus or args.config:
        raise UsageError("--suite: --root, --corpus and --config do not apply; set roots.<reader>=PATH overrides or the suite file")
    plan = load_suite(args.suite, downstream_overrides(args))
    if not args.collect:  # as for one evaluation: the weights load and fit before a cell runs or a job is submitted
        check_encoder(plan.suite.encoder)
    for s in plan.skipped:
        print(f"skipped {s['protocol']} x {s['dataset']} ({s['reader']}): {s['reason']}", flush=True)
    if not plan.cells and not args.collect:
        raise UsageError(f"--suite {args.suite}: no release present for any protocol (see the skipped lines); expected at least one root")
    opts = ClusterOptions.from_args(args)
    if args.collect:
        table = collect_suite(plan)
    elif opts.cluster == "local" and not args.dry_run:
        table = run_suite(plan)
    else:
        wait = args.wait if args.wait is not None else True
        launch_array(CELL_TARGET, [c.cfg for c in plan.cells], opts, plan.out / "logs",
                     names=[f"{c.protocol}-{c.dataset}" for c in plan.cells], dry_run=args.dry_run, wait_for_result=wait)
        if args.dry_run or not wait:
            return 0
        table = collect_suite(plan)
    if args.json:
        print(json.dumps({k: table[k] for k in ("measured", "published", "skipped", "report")}, default=str))
    else:
        print(Path(table["report"]["markdown"]).read_text() + f"report: {table['report']['markdown']}")
    return 0


def body(args: argparse.Namespace) -> int:
    if args.suite:
        return suite_body(args)
    from c2p.eval.report import eval_dir
    from c2p.eval.zeroshot import evaluate_zeroshot

    cfg = load_config(DownstreamConfig, args.config, downstream_overrides(args))
    check_inputs(cfg)
    opts = ClusterOptions.from_args(args)
    if opts.cluster == "local" and not args.dry_run:
        results = evaluate_zeroshot(cfg)
    else:
        results = launch(TARGETS[args.task], cfg, opts, eval_dir(cfg) / args.task, config_text=to_yaml(cfg),
                         dry_run=args.dry_run, wait_for_result=args.wait)
        if not isinstance(results, dict):  # dry run, or a submitted job not waited for
            return 0
    print_results(results, args.json)
    return 0


def print_results(results: dict, as_json: bool) -> None:
    m = results["metrics"]
    if as_json:
        print(json.dumps({k: v for k, v in results.items() if k != "config"}, default=str))
        return
    print(
        f"{results['task']} {results['corpus']}/{results['split']} ({results['encoder']}, {results['views']} views): "
        f"top-1 {100 * m['top1']:.2f}%  top-5 {100 * m['top5']:.2f}%  mean class acc {100 * m['mean_class_acc']:.2f}%  "
        f"over {m['n']} objects\nreport: {results['report']['markdown']}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    # EvalError, CorpusError: bad inputs found while reading them
    return run_command(build_parser(), body, argv, refused=(EvalError, CorpusError))


if __name__ == "__main__":
    sys.exit(main())
