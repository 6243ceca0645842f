"""The evaluation suite: every protocol × dataset whose release is present, one table.

    plan = load_suite("configs/eval/suite.yaml", ["encoder.depth_tower=runs/b32/export/depth_tower.safetensors"])
    # or encoder.depth_tower=s3://ckpt/b32/export/depth_tower.safetensors: each cell reads the cached download
    table = run_suite(plan)                  # in this process, cell after cell
    # or: launch_array(CELL_TARGET, [c.cfg for c in plan.cells], ...) then collect_suite(plan)

A *cell* is one (protocol, dataset): a :class:`~c2p.config.downstream.DownstreamConfig` built
from the suite's encoder and the protocol's settings (points, sampling, axes, views, prompts),
run by :func:`run_cell` (zero-shot, then the K-shot sweep when the suite asks for one and the
release has a train split). A cell writes ``<out>/cells/<protocol>/<dataset>/cell.json``; the
table (:mod:`c2p.eval.suitetable`) is built from those files only, so a job array's elements
and a local run give the same table, and re-running with the same inputs gives the same bytes.

Output folder ``<run.dir>/<run.name>/eval/suite/``: ``table.{md,json,csv}``, ``cells/`` (each
cell's zero-shot report with its confusion plot, and few-shot reports), ``cache/`` (view features).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from c2p import storage
from c2p.config import ConfigError, load_config
from c2p.config.downstream import (
    AdapterConfig,
    DownstreamConfig,
    EvalDataConfig,
    FinetuneConfig,
)
from c2p.config.evalsuite import (
    ProtocolConfig,
    ProtocolDataset,
    PublishedNumbers,
    SuiteConfig,
)

__all__ = ["CELL_TARGET", "Cell", "SuitePlan", "load_suite", "suite_dir", "cell_config", "run_cell", "run_suite", "collect_suite"]

log = logging.getLogger(__name__)

CELL_TARGET = "c2p.eval.suite:run_cell"
CELL_FILE = "cell.json"


@dataclass
class Cell:
    """One (protocol, dataset) of the suite and the config that evaluates it."""

    protocol: str
    dataset: str
    cfg: DownstreamConfig


@dataclass
class SuitePlan:
    """What a suite will run (``cells``), what it skips and why, and the published rows."""

    suite: SuiteConfig
    protocols: list[ProtocolConfig]
    cells: list[Cell]
    skipped: list[dict]
    published: PublishedNumbers
    out: Path


def suite_dir(suite: SuiteConfig) -> Path:
    """``<run.dir>/<run.name>/eval/suite``: the table and the cells."""
    return Path(suite.run.dir) / suite.run.name / "eval" / "suite"


def _beside(path: str, base: Path) -> Path:
    """A relative config path: beside the suite file if it exists there, else as given (CWD)."""
    p = Path(path)
    return p if p.is_absolute() or not (base / p).is_file() else base / p


def cell_config(suite: SuiteConfig, protocol: ProtocolConfig, d: ProtocolDataset, root: str, out: Path) -> DownstreamConfig:
    """The DownstreamConfig of one cell: the suite's encoder and run, the protocol's settings."""
    enc = dataclasses.replace(suite.encoder, views=protocol.views, templates=list(protocol.templates),
                              cache_dir=suite.encoder.cache_dir or str(out / "cache" / "features"))
    data = EvalDataConfig(corpus=d.reader, root=root, variant=d.variant, test_split=d.split, train_split=d.train_split or "train",
                          points=d.points or protocol.points, sampling=protocol.sampling, sampling_seed=protocol.seed,
                          normalize=protocol.normalize, rotate_zup=d.axis == "rotate_zup", swap_yz=d.axis == "swap_yz")
    fs = suite.fewshot
    shots = list(fs.shots) if d.train_split else []
    run = dataclasses.replace(suite.run, dir=str(out / "cells" / protocol.name), name=d.name)
    cfg = DownstreamConfig(run=run, data=data, encoder=enc, adapter=AdapterConfig(paths=fs.paths),
                           finetune=FinetuneConfig(task="fewshot", shots=shots, seeds=list(fs.seeds), epochs=fs.epochs, lr=fs.lr, batch_size=fs.batch_size))
    cfg.validate()
    return cfg


def _check_tower(tower: str) -> None:
    """``encoder.depth_tower`` is empty, an existing local file, or a well-formed ``s3://bucket/key``
    (its shape only: no request is made here; the launcher's preflight and each cell fetch the
    object through :mod:`c2p.storage.cache`). Raises :class:`ConfigError` naming the key."""
    expected = "an existing local weights file or the s3://bucket/key of an exported depth tower"
    if not tower:
        return
    if storage.is_remote(tower):
        try:
            storage.check_url(tower, "object")
        except ValueError as e:
            raise ConfigError("encoder.depth_tower", tower, f"{expected} ({e})") from e
    elif not Path(tower).is_file():
        raise ConfigError("encoder.depth_tower", tower, expected)


def load_suite(path: str | Path | None, overrides: Sequence[str] = ()) -> SuitePlan:
    """Read and check the suite, its protocols and published numbers; plan the cells.

    A dataset whose reader has no root in ``roots``, or whose root does not exist, is skipped
    (listed in ``skipped`` with the reason). Nothing is written. Raises :class:`ConfigError`
    for a bad suite, protocol or published file, naming the file and key.
    """
    suite = load_config(SuiteConfig, path, overrides)
    base = Path(path).parent if path else Path(".")
    protocols = []
    for p in suite.protocols:
        file = _beside(p, base)
        if not file.is_file():
            raise ConfigError("protocols", p, f"an existing protocol YAML (looked beside {base} and in the working directory)")
        protocols.append(load_config(ProtocolConfig, file))
    names = [p.name for p in protocols]
    if len(set(names)) != len(names):
        raise ConfigError("protocols", names, "protocols with distinct names")
    published = PublishedNumbers()
    if suite.published:
        file = _beside(suite.published, base)
        if not file.is_file():
            raise ConfigError("published", suite.published, "an existing YAML of published numbers (or an empty string)")
        published = load_config(PublishedNumbers, file)
    if suite.fewshot.shots and suite.fewshot.paths in ("both", "depth") and not suite.encoder.depth_tower:
        raise ConfigError("fewshot.paths", suite.fewshot.paths, "clip, or an encoder.depth_tower for the depth path of the K-shot rows")
    _check_tower(suite.encoder.depth_tower)
    if suite.encoder.pretrained and not Path(suite.encoder.pretrained).is_file():
        raise ConfigError("encoder.pretrained", suite.encoder.pretrained, "an existing local weights file")
    out = suite_dir(suite)
    cells, skipped = [], []
    for proto in protocols:
        for d in proto.datasets:
            root = suite.roots.get(d.reader, "")
            if not root or not Path(root).exists():
                why = f"roots.{d.reader} is not set" if not root else f"{root} does not exist"
                skipped.append({"protocol": proto.name, "dataset": d.name, "reader": d.reader, "reason": f"no data: {why}"})
                continue
            cells.append(Cell(proto.name, d.name, cell_config(suite, proto, d, root, out)))
    return SuitePlan(suite, protocols, cells, skipped, published, out)


def _cell_file(cfg: DownstreamConfig) -> Path:
    return Path(cfg.run.dir) / cfg.run.name / CELL_FILE


def run_cell(cfg: DownstreamConfig, towers=None) -> dict:
    """The job of one cell: zero-shot of ``cfg``, then its K-shot sweep (``finetune.shots``, if
    any). Writes ``cell.json`` (tmp + rename) and returns it as a dict. ``towers``
    (:class:`~c2p.eval.towers.Towers`): zero-shot with these instead of building ``cfg.encoder``'s."""
    from c2p.eval.fewshot import run_sweep
    from c2p.eval.zeroshot import evaluate_zeroshot

    zs = evaluate_zeroshot(cfg, towers=towers)
    fewshot = None
    if cfg.finetune.shots:
        sweep = run_sweep(cfg)
        fewshot = {"rows": sweep["rows"], "report": sweep["report"]}
    d = cfg.data
    cell = {
        "protocol": Path(cfg.run.dir).name,
        "dataset": cfg.run.name,
        "reader": d.corpus,
        "variant": d.variant,
        "root": d.root,
        "split": d.test_split,
        "settings": {"points": d.points, "sampling": d.sampling, "seed": d.sampling_seed,
                     "axis": "rotate_zup" if d.rotate_zup else "swap_yz" if d.swap_yz else "as_stored",
                     "views": cfg.encoder.views, "templates": len(cfg.encoder.templates)},
        "zeroshot": {k: zs[k] for k in ("metrics", "encoder", "points_per_object", "prompts", "templates", "skipped_objects",
                                        "checkpoint_hash", "clip_hash", "report")},
        "fewshot": fewshot,
    }
    path = _cell_file(cfg)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cell, indent=1, default=str) + "\n")
    os.replace(tmp, path)
    return cell


def run_suite(plan: SuitePlan, towers=None) -> dict:
    """Every cell of ``plan`` in this process, then the table. Returns :func:`collect_suite`'s dict.
    ``towers``: given frozen towers for every cell's zero-shot (see :func:`run_cell`)."""
    for cell in plan.cells:
        log.info("suite: %s × %s", cell.protocol, cell.dataset)
        run_cell(cell.cfg, towers)
    return collect_suite(plan)


def collect_suite(plan: SuitePlan) -> dict:
    """The table from the cells' ``cell.json`` files (a finished job array, or a local run).

    Raises :class:`~c2p.eval.errors.EvalError` naming the cells without results.
    """
    from c2p.eval.errors import EvalError
    from c2p.eval.suitetable import write_table

    cells, missing = [], []
    for c in plan.cells:
        f = _cell_file(c.cfg)
        if f.is_file():
            cells.append(json.loads(f.read_text()))
        else:
            missing.append(f"{c.protocol}/{c.dataset}")
    if missing:
        raise EvalError(f"suite {plan.suite.run.name!r}: no {CELL_FILE} for {missing}; expected every cell to have finished")
    return write_table(plan.out, plan.protocols, cells, plan.skipped, plan.published, title=plan.suite.run.name)
