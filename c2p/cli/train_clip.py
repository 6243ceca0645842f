"""Train a small CLIP on image-text pair shards with open_clip's own trainer (``open_clip_train``).

    c2p-train-clip --shards runs/demo/shards/train --out runs/demo/clip \\
        --model c2p-small --epochs 6 --batch-size 64

``--shards``: pair shards written by :mod:`c2p.data.pairs` (a directory with ``pairs.json``),
or c2p object shard directories, which are first exported to ``<out>/pairs/`` (one RGB view
and its caption per sample: the layout open_clip_train's ``--dataset-type webdataset`` reads).
Two runs with one ``--seed`` (and the same ``--workers``, ``--batch-size`` and ``--threads``)
give bit-identical weights (:mod:`c2p.train.openclip` says how). ``--out`` gets
``clip.safetensors`` (``create_clip(model, pretrained=...)`` loads it) and ``summary.json``;
the last lines printed are the paths of everything produced. Re-running a finished command
trains nothing and re-exports the weights. Exit status: 0 done, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Sequence

from c2p.cli.base import UsageError, command_parser, run_command


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(__doc__)
    p.add_argument("--shards", nargs="+", required=True, help="pair shard directory (pairs.json) or c2p object shard directories (exported first)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--model", default="c2p-small", help="open_clip architecture (c2p-tiny, c2p-small, ViT-B-32, ...)")
    p.add_argument("--pretrained", default="", help="local weights file to start from (default: random init)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=20, help="linear warmup steps")
    p.add_argument("--grad-clip-norm", type=float, default=1.0, help="0: off")
    p.add_argument("--seed", type=int, default=0, help="model init, crops, shard and sample order: same seed, same weights")
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader worker processes (at most one per pair shard, extra ones are dropped); part of "
                        "what a repeat must match, as --seed, --batch-size and --threads")
    p.add_argument("--save-frequency", type=int, default=1, help="epochs between checkpoints/epoch_N.pt")
    p.add_argument("--resume", default="latest",
                   help="latest (continue the run in <out>/open_clip_train if it has a checkpoint), none (refuse to "
                        "overwrite an existing run) or a checkpoint path")
    p.add_argument("--log-every", type=int, default=10, help="steps between progress lines")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default, one per core); the weights' bits depend on it. "
                        "On cores shared with other jobs 1 is far faster than 2 (idle 2 cores: 2 is 1.7x faster)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, ...)")
    return p


def settings_of(a: argparse.Namespace) -> Any:
    """The parsed flags, checked, as :class:`c2p.train.openclip.ClipTrainSettings`; raises UsageError."""
    from c2p.train.openclip import ClipTrainSettings

    for name in ("epochs", "batch_size", "log_every", "save_frequency"):
        if getattr(a, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(a, name)}: expected >= 1")
    if a.lr <= 0:
        raise UsageError(f"--lr {a.lr}: expected > 0")
    for name in ("wd", "warmup", "grad_clip_norm", "workers", "threads"):
        if getattr(a, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(a, name)}: expected >= 0")
    if a.pretrained and not Path(a.pretrained).is_file():
        raise UsageError(f"--pretrained {a.pretrained!r}: no such file (weights are only read from local files)")
    if a.resume not in ("latest", "none") and not Path(a.resume).is_file():
        raise UsageError(f"--resume {a.resume!r}: expected latest, none or an existing checkpoint file")
    known = {f.name for f in dataclasses.fields(ClipTrainSettings)}
    return ClipTrainSettings(**{k: v for k, v in vars(a).items() if k in known})


def train(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, check, train, print the summary; returns it. Raises UsageError on bad arguments."""
    return _train(build_parser().parse_args(argv))


def _train(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from c2p.train.openclip import train_clip

    settings = settings_of(a)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        summary = train_clip(settings, a.shards, a.out)
    except FileExistsError as e:  # --resume none on a run that exists: refused before anything was written
        raise UsageError(str(e)) from e
    if summary["epochs_run"]:
        rate, loss = summary["samples_per_s"], summary["last"].get("loss")
        print(f"trained {a.model} with open_clip_train: {summary['pairs']} pairs, epochs {summary['start_epoch'] + 1}-"
              f"{a.epochs} of {a.epochs} ({summary['steps_per_epoch']} steps of {summary['batch_size']} each) in "
              f"{summary['seconds']:.0f} s" + (f", {rate:.1f} samples/s" if rate else "")
              + (f", last loss {loss:.3f}" if loss is not None else ""), flush=True)
    else:
        print(f"{a.model} was already trained for {a.epochs} epochs by open_clip_train; weights exported again", flush=True)
    for key in ("pairs_dir", "log", "checkpoint", "summary", "weights"):
        print(f"  {key:<10} {summary[key]}", flush=True)
    return summary


def _body(args: argparse.Namespace) -> None:
    _train(args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser(), _body, argv)


if __name__ == "__main__":
    sys.exit(main())
