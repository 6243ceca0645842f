"""Train a CLIP on image–text pair shards with open_clip's own trainer (``open_clip_train``).

open_clip's reference trainer (shipped in the open_clip_torch wheel) runs in this process,
after ``register_tiny_configs()`` so that ``c2p-tiny`` / ``c2p-small`` resolve: single process,
fp32, ``device`` (cpu by default), no wandb. Inside :func:`open_clip_train_fixes` two stages
of its webdataset pipeline are swapped for the call (site-packages files are untouched):

1. its tar reader, which fails at the end of the first shard with the webdataset this project
   runs (1.0.2 yields an end-of-shard marker that open_clip_train's reader takes for a file);
2. its sample shuffle buffer, which it builds without a seed, so webdataset seeds it from the
   clock: here it draws from ``random.Random(seed)``. open_clip_train already seeds the model
   init, the random crops and the shard order, so two runs with one seed (and the same
   workers, batch size and threads) give bit-identical weights.

Its outputs land in ``<out>/open_clip_train/``: ``out.log``, ``params.txt`` and
``checkpoints/epoch_N.pt`` (``epoch``, ``name``, ``state_dict``, ``optimizer``) plus
``checkpoints/epoch_latest.pt`` (written to a temporary name and renamed), which ``resume=
"latest"`` continues from at an epoch boundary. A resumed run is not bitwise the run it
continues (the random-crop and shuffle generators restart from the seed).
The command is :mod:`c2p.cli.train_clip`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from c2p.fileio import atomic_write_bytes
from c2p.models.clip import create_clip, register_tiny_configs
from c2p.data.pairs import PAIRS_NAME, SIZES_NAME, PairExport, export_pairs, load_export

__all__ = ["ClipTrainSettings", "train_clip", "open_clip_train_fixes", "open_clip_train_argv", "progress_of", "existing_run"]


@dataclass
class ClipTrainSettings:
    """What one open_clip_train run is asked for (the command's flags, typed)."""

    model: str = "c2p-small"  # open_clip architecture (c2p-tiny, c2p-small, ViT-B-32, ...)
    pretrained: str = ""  # local weights file to start from ("" = random init)
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    wd: float = 0.1
    warmup: int = 20  # linear warmup steps
    grad_clip_norm: float = 1.0  # 0: off
    seed: int = 0  # model init, crops, shard and sample order
    workers: int = 0  # DataLoader worker processes (at most one per pair shard)
    save_frequency: int = 1  # epochs between checkpoints/epoch_N.pt
    resume: str = "latest"  # latest, none, or a checkpoint path
    log_every: int = 10  # steps between progress lines
    device: str = "cpu"


RUN = "open_clip_train"  # open_clip_train's run folder (its --name) inside --out
CHECKPOINTS = "checkpoints"
FINAL_WEIGHTS = "clip.safetensors"
SUMMARY = "summary.json"

# open_clip_train's progress line, e.g. "Train Epoch: 0 [ 64/2880 (2%)] Data (t): 0.010 Batch (t): 0.900,
# 71.1/s, 71.1/s/gpu LR: 0.000050 Logit Scale: 14.286 Contrastive_loss: 4.1 (4.1) Loss: 4.1 (4.1)"
PROGRESS = re.compile(r"Train Epoch: (?P<epoch>\d+) \[\s*(?P<seen>\d+)/(?P<total>\d+).*?Batch \(t\): (?P<batch_s>[\d.]+), "
                      r"(?P<samples_per_s>[\d.]+)/s.*?LR: (?P<lr>[\d.eE+-]+) Logit Scale: (?P<logit_scale>[\d.]+).*"
                      r" Loss: (?P<loss>[\d.naif-]+)")


def resolve_pairs(sources: Sequence[str], out: Path) -> PairExport:
    """Pair shards to train on: an existing export, or object shards exported to ``out/pairs``."""
    if len(sources) == 1 and (Path(sources[0]) / PAIRS_NAME).is_file():
        return load_export(sources[0])
    return export_pairs(sources, out / "pairs")


def epoch_samples(pairs: PairExport) -> int:
    """Pairs per epoch, from the export's ``sizes.json`` (the file open_clip_train itself reads)."""
    path = Path(pairs.out) / SIZES_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist; expected the sizes.json written by c2p.data.pairs")
    return sum(int(n) for n in json.loads(path.read_text()).values())


def open_clip_train_argv(a: ClipTrainSettings, pairs: PairExport, out: Path) -> list[str]:
    """open_clip_train's command line for ``a`` on the exported pair shards; its run folder is ``out/open_clip_train``."""
    samples = epoch_samples(pairs)
    argv = ["--train-data", pairs.train_data, "--dataset-type", "webdataset", "--train-num-samples", str(samples),
            "--model", a.model, "--epochs", str(a.epochs),
            # a batch larger than the data would make open_clip_train repeat pairs inside one batch
            "--batch-size", str(min(a.batch_size, samples)),
            # its defaults for names without "vit" are ResNet's (beta2 0.999, eps 1e-8); ours are ViTs
            "--lr", str(a.lr), "--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-6", "--wd", str(a.wd),
            "--warmup", str(a.warmup), "--seed", str(a.seed),
            # it asserts shards >= workers: each worker reads whole shards
            "--workers", str(min(a.workers, len(pairs.shards))),
            "--logs", str(out), "--name", RUN, "--save-frequency", str(a.save_frequency),
            # epoch_latest.pt is written to tmp.pt and renamed; --resume latest then reads only it,
            # never an epoch_N.pt cut short by a kill
            "--save-most-recent",
            "--precision", "fp32", "--device", a.device, "--report-to", "", "--log-every-n-steps", str(a.log_every)]
    if a.grad_clip_norm > 0:
        argv += ["--grad-clip-norm", str(a.grad_clip_norm)]
    if a.pretrained:
        argv += ["--pretrained", a.pretrained]
    if a.resume != "none":
        argv += ["--resume", a.resume]
    return argv


@contextlib.contextmanager
def open_clip_train_fixes(seed: int) -> Iterator[None]:
    """While open, two stages of open_clip_train's webdataset pipeline are swapped, in this
    process and only for the call (site-packages files are untouched):

    1. its tar reader drops webdataset's end-of-shard markers. Since webdataset 0.2.96
       ``tar_file_expander`` yields an empty dict after each shard (its ``eof_value``);
       open_clip_train's ``group_by_keys_nothrow`` reads it as a file and fails with
       ``KeyError: 'fname'`` at the end of the first shard (open_clip pins webdataset <= 0.2.86,
       this project runs 1.0.2; webdataset/webdataset#384, mlfoundations/open_clip#935). No flag
       avoids it; the replacement is the same three stages with ``eof_value=None`` (the fix given
       in those threads). With a webdataset that has no ``eof_value`` this part does nothing.
    2. its sample shuffle buffer draws from ``random.Random(seed)``. open_clip_train seeds the
       shard order (``detshuffle2``) but builds ``wds.shuffle`` without a seed, so webdataset
       seeds it from the clock and two runs with the same ``--seed`` differ; the demo promises
       the same table for the same seed. One generator per pipeline, not ``seed=seed``: with
       ``seed=`` webdataset restarts the generator every epoch, and with one pair shard (so one
       shard order) every epoch would see the same batches. The generator lives where the
       pipeline runs: in this process with ``--workers 0``, else in each DataLoader worker,
       which open_clip_train keeps for the whole run (``persistent_workers``), so epochs still
       differ and runs still repeat.
    """
    import inspect

    import webdataset
    from open_clip_train import data
    from webdataset.tariterators import tar_file_expander, url_opener

    originals = (data.tarfile_to_samples_nothrow, webdataset.shuffle)
    if "eof_value" in inspect.signature(tar_file_expander).parameters:

        def tarfile_to_samples_nothrow(src, handler=data.log_and_continue):
            files = tar_file_expander(url_opener(src, handler=handler), handler=handler, eof_value=None)
            return data.group_by_keys_nothrow(files, handler=handler)

        data.tarfile_to_samples_nothrow = tarfile_to_samples_nothrow

    def seeded_shuffle(bufsize=1000, initial=100, **kw):
        if kw.get("rng") is None and kw.get("seed") is None:  # open_clip_train passes neither
            kw["rng"] = random.Random(seed)
        return originals[1](bufsize=bufsize, initial=initial, **kw)

    webdataset.shuffle = seeded_shuffle  # open_clip_train.data calls it as ``wds.shuffle``
    try:
        yield
    finally:
        data.tarfile_to_samples_nothrow, webdataset.shuffle = originals


def run_open_clip_train(argv: Sequence[str], seed: int = 0) -> None:
    """``open_clip_train.main.main(argv)`` in this process, as one process (no DDP); raises
    SystemExit if it refuses to run.

    Its log lines (the root logger's stderr handler it adds) go to stdout here, where progress
    belongs. It sets every logger to INFO and adds handlers to the root logger; both are undone
    afterwards, so a second call in the same process does not print each line twice, keep the
    old ``out.log`` open, or leave torch's loggers chatty at exit.
    """
    from open_clip_train.main import main as open_clip_train_main

    register_tiny_configs()  # same process: its create_model and get_tokenizer see c2p-tiny / c2p-small
    root = logging.getLogger()
    handlers = list(root.handlers)
    levels = {name: logger.level for name, logger in logging.root.manager.loggerDict.items()
              if isinstance(logger, logging.Logger)}
    root_level = root.level
    # one process: a SLURM allocation's SLURM_NTASKS > 1 must not turn this into a DDP job that
    # waits for peers (open_clip_train reads WORLD_SIZE first)
    world_size = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = "1"
    try:
        # its StreamHandler binds sys.stderr when it is created, inside main()
        with contextlib.redirect_stderr(sys.stdout), open_clip_train_fixes(seed):
            status = open_clip_train_main(list(argv))
    finally:
        if world_size is None:
            del os.environ["WORLD_SIZE"]
        else:
            os.environ["WORLD_SIZE"] = world_size
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(root_level)
        for name, logger in logging.root.manager.loggerDict.items():
            if isinstance(logger, logging.Logger):
                logger.setLevel(levels.get(name, logging.NOTSET))
    if status == -1:  # its way of refusing, e.g. an existing run without --resume latest
        raise SystemExit(f"open_clip_train refused to run (see the error above); {' '.join(argv)}")


def progress_of(log_text: str) -> dict[str, Any]:
    """Epochs started and the last progress line's numbers in a piece of open_clip_train's ``out.log``."""
    epochs = [int(m) for m in re.findall(r"Start epoch (\d+)", log_text)]
    found: dict[str, Any] = {"epochs_run": len(epochs), "first_epoch": min(epochs) if epochs else None}
    lines = list(PROGRESS.finditer(log_text))
    if lines:
        last = lines[-1]
        found["last"] = {k: (int(v) if k in ("epoch", "seen", "total") else float(v)) for k, v in last.groupdict().items()}
        rates = [float(m["samples_per_s"]) for m in lines]
        found["samples_per_s_median"] = sorted(rates)[len(rates) // 2]
    return found


def save_weights(path: Path, model: torch.nn.Module) -> None:
    """The model's state dict as safetensors, written atomically (``c2p.fileio.atomic_write_bytes``)."""
    from safetensors.torch import save
    atomic_write_bytes(path, save({k: v.detach().contiguous() for k, v in model.state_dict().items()}))


def train_open_clip_train(a: ClipTrainSettings, pairs: PairExport, out: Path) -> dict[str, Any]:
    """Run open_clip_train up to ``a.epochs``, then export its final checkpoint as ``clip.safetensors``."""
    run = out / RUN
    log = run / "out.log"
    log_start = log.stat().st_size if log.is_file() else 0
    argv = open_clip_train_argv(a, pairs, out)
    t0 = time.perf_counter()
    run_open_clip_train(argv, seed=a.seed)
    seconds = time.perf_counter() - t0
    checkpoint = run / CHECKPOINTS / f"epoch_{a.epochs}.pt"
    if not checkpoint.is_file():
        raise RuntimeError(f"open_clip_train finished without {str(checkpoint)!r}; see {str(log)!r}")
    model = create_clip(a.model, pretrained=str(checkpoint))  # also checks the checkpoint fits the architecture
    weights = out / FINAL_WEIGHTS
    save_weights(weights, model)
    progress = progress_of(log.read_text()[log_start:] if log.is_file() else "")
    samples = epoch_samples(pairs)
    batch = min(a.batch_size, samples)
    steps_per_epoch = -(-samples // batch)  # open_clip_train rounds an epoch up to whole batches
    return {"engine": "open_clip_train", "model": a.model, "pairs": samples, "epochs": a.epochs,
            "batch_size": batch, "steps_per_epoch": steps_per_epoch, "steps": steps_per_epoch * a.epochs,
            "start_epoch": progress["first_epoch"] if progress["first_epoch"] is not None else a.epochs,
            "epochs_run": progress["epochs_run"], "seconds": round(seconds, 2),
            # open_clip_train's own rate (median over its log windows): training steps only, no start-up
            "samples_per_s": progress.get("samples_per_s_median"), "last": progress.get("last", {}),
            "seed": a.seed, "workers": int(argv[argv.index("--workers") + 1]), "threads": torch.get_num_threads(),
            "argv": argv, "weights": str(weights), "checkpoint": str(checkpoint), "log": str(log)}


def existing_run(out: Path) -> Path | None:
    """open_clip_train's run folder in ``out`` if it already holds a log or a checkpoint."""
    run = out / RUN
    return run if (run / "out.log").is_file() or any((run / CHECKPOINTS).glob("*.pt")) else None




def train_clip(settings: ClipTrainSettings, shards: Sequence[str], out: str | Path) -> dict[str, Any]:
    """Export ``shards`` to pairs (unless they already are a pair export), run open_clip_train up
    to ``settings.epochs`` (continuing ``out``'s run with ``resume="latest"``) and write
    ``out/clip.safetensors`` and ``out/summary.json``. Returns the summary.

    Raises :class:`FileExistsError` for ``resume="none"`` on an ``out`` that holds a run, before
    anything is written (open_clip_train would refuse too, after the export).
    """
    out = Path(out)
    if settings.resume == "none" and (run := existing_run(out)) is not None:
        raise FileExistsError(f"--resume none: {str(run)!r} already holds a run; expected a fresh --out, "
                              f"or --resume latest to continue it")
    out.mkdir(parents=True, exist_ok=True)
    pairs = resolve_pairs(shards, out)
    summary = train_open_clip_train(settings, pairs, out)
    summary["pairs_dir"] = pairs.out
    summary["summary"] = str(out / SUMMARY)
    atomic_write_bytes(out / SUMMARY, json.dumps(summary, indent=1, sort_keys=True).encode())
    return summary
