"""What the evaluation and fine-tuning commands share: the corpus/tower/run flags, how they
become config overrides, and the input checks made before anything is written or submitted."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from c2p.config import ConfigError
from c2p.config.downstream import DownstreamConfig
from c2p.train.export import DEPTH_TOWER_FILE, DEPTH_TOWER_INFO, EXPORT_DIR

__all__ = ["add_downstream_args", "downstream_overrides", "run_flags", "check_inputs"]


def add_downstream_args(p: argparse.ArgumentParser, depth_help: str = "") -> None:
    """The flags both commands take; :func:`downstream_overrides` turns them into overrides."""
    p.add_argument("--root", help="corpus root (data.root)")
    p.add_argument("--corpus", help="corpus reader (data.corpus)")
    p.add_argument("--depth-tower", help="exported depth tower .safetensors (encoder.depth_tower)" + depth_help)
    p.add_argument("--run", help="a pre-training run directory: its export/depth_tower.safetensors and model, reports in <run>/eval/")
    p.add_argument("--name", help="run name (run.name): reports go to <run.dir>/<name>/eval/")


def downstream_overrides(args: argparse.Namespace, flags: dict[str, object] | None = None) -> list[str]:
    """``--run``, the shared flags, the command's own ``flags`` (config key → value) and the
    ``key=value`` overrides, in that order (later wins)."""
    shared = {"data.root": args.root, "data.corpus": args.corpus, "encoder.depth_tower": args.depth_tower, "run.name": args.name}
    named = {**shared, **(flags or {})}
    return run_flags(args.run) + [f"{k}={v}" for k, v in named.items() if v is not None] + list(args.overrides)


def run_flags(run: str | None) -> list[str]:
    """``--run runs/<name>``: overrides evaluating that pre-training run's exported depth tower
    (``export/depth_tower.safetensors``; the model name from ``export/depth_tower.json``) with the
    reports under the same run (``runs/<name>/eval/``). Raises ConfigError if there is no export."""
    if not run:
        return []
    run_dir = Path(run)
    tower = run_dir / EXPORT_DIR / DEPTH_TOWER_FILE
    if not tower.is_file():
        raise ConfigError("--run", run, f"a pre-training run directory with {tower.relative_to(run_dir)} (run c2p-export first)")
    out = [f"encoder.depth_tower={tower}", f"run.dir={run_dir.parent}", f"run.name={run_dir.name}"]
    info = run_dir / EXPORT_DIR / DEPTH_TOWER_INFO
    if info.is_file():
        model = json.loads(info.read_text()).get("model")
        if model:
            out.append(f"encoder.model={model}")
    return out


def check_inputs(cfg: DownstreamConfig) -> None:
    """Files the job will read must exist, and the weights load and fit the model, before anything
    is written or submitted (:func:`c2p.preflight.check_encoder`)."""
    from c2p.preflight import check_encoder

    if not Path(cfg.data.root).exists():
        raise ConfigError("data.root", cfg.data.root, "an existing corpus directory")
    check_encoder(cfg.encoder)
