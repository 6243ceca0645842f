"""Sharded DeepSpeed checkpoints that resume exactly, survive crashes and change world size.

Layout under ``<run>/checkpoints/``::

    step_00000500/                 a DeepSpeed tag (one shard file per rank + model states)
        c2p_commit.json            commit marker: written LAST, after every rank finished
    step_00000500_universal/       universal-format cache (made on demand for another world size)
    latest                         newest committed tag name (DeepSpeed's format; written after the marker)
    zero_to_fp32.py                DeepSpeed's own recovery script (copied by DeepSpeed)

A tag exists only if its commit marker does: discovery ignores folders without it, so a
save killed mid-write is never resumed from. :class:`CheckpointManager` owns the whole
policy (when to save, commit, ``latest``, keep-K, what to resume from, conversion); the
training loop only calls ``resolve``/``prepare``/``load`` once and ``save`` every step.
:mod:`c2p.train.export` writes the engine-free depth tower of a committed tag.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from c2p.config.core import config_diff
from c2p.fileio import atomic_write_bytes

log = logging.getLogger("c2p.train")

__all__ = [
    "TAG_PATTERN", "COMMIT_NAME", "LATEST_NAME", "KILL_ENV", "DUMP_ENV", "tag_name", "CommittedTag", "ResumeTarget",
    "CheckpointMismatchError", "CheckpointManager", "committed_tags", "read_commit", "consolidated_state_dict",
]

TAG_PATTERN = re.compile(r"^step_(\d{8})$")
COMMIT_NAME = "c2p_commit.json"
LATEST_NAME = "latest"
UNIVERSAL_SUFFIX = "_universal"
UNIVERSAL_DONE = "c2p_universal.json"
RANK_STATE = "c2p_rank{rank:05d}.json"
# Fault injection: "STEP:RANK" makes that rank exit right after its shard of tag STEP is written,
# before the commit marker (simulates a node lost mid-save).
KILL_ENV = "C2P_CKPT_KILL_AFTER_SHARD"
# Verification hook: a folder; right after a resume every rank saves what it loaded there as
# tag "loaded" (compare it with the source tag: weights and optimizer moments must be equal).
DUMP_ENV = "C2P_CKPT_DUMP_AFTER_LOAD"
# DeepSpeed's universal converter asks for this in the client state (we write it; --inject_missing_state covers old tags).
_UNIVERSAL_INFO = {"universal_checkpoint_info": {"universal_checkpoint_version": 0.2}}


def tag_name(step: int) -> str:
    """Tag folder name of optimizer step ``step`` (``500`` -> ``step_00000500``)."""
    return f"step_{step:08d}"


class CheckpointMismatchError(ValueError):
    """A checkpoint of another model (architecture or embedding size) than the one being built."""


@dataclass
class CommittedTag:
    """A tag whose commit marker exists. ``meta`` is the marker's JSON."""

    tag: str
    step: int
    path: Path
    meta: dict = field(repr=False)

    @property
    def world_size(self) -> int:
        return int(self.meta["world_size"])

    @property
    def zero_stage(self) -> int:
        return int(self.meta["zero_stage"])


@dataclass
class ResumeTarget:
    """What ``engine.load_checkpoint(load_dir, tag)`` will read, and where it came from."""

    source: CommittedTag
    load_dir: Path
    tag: str
    universal: bool


def _atomic_write_text(path: Path, text: str) -> None:
    """tmp + fsync + rename + fsync(dir): after a crash the file is either old or new, never torn."""
    atomic_write_bytes(path, text.encode())


def read_commit(tag_dir: Path) -> dict | None:
    """The commit marker (JSON) of a tag folder, or None when the tag was never committed."""
    try:
        return json.loads((tag_dir / COMMIT_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def committed_tags(root: str | Path) -> list[CommittedTag]:
    """Committed tags under a checkpoints folder, oldest first. Folders without a marker are ignored."""
    root = Path(root)
    out = []
    if not root.is_dir():
        return out
    for d in root.iterdir():
        m = TAG_PATTERN.match(d.name)
        if not (m and d.is_dir()):
            continue
        meta = read_commit(d)
        if meta is not None:
            out.append(CommittedTag(d.name, int(m.group(1)), d, meta))
    return sorted(out, key=lambda t: t.step)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _broadcast_error(message: str | None, rank: int) -> None:
    """Rank 0's error (or None) reaches every rank, so no rank waits forever for a failed one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
    if message:
        raise RuntimeError(message)


class CheckpointManager:
    """Save/commit/latest/keep-K/resume policy of one run.

    ``signature``: what must match to load a checkpoint (``model`` name, ``embed_dim``, ...).
    ``config``: the resolved config dict (saved in the marker; differences are logged on resume).
    """

    def __init__(self, root: str | Path, *, rank: int, world_size: int, zero_stage: int, every: int, keep: int,
                 signature: dict, config: dict, config_hash: str):
        self.root = Path(root)
        self.rank, self.world_size, self.zero_stage = rank, world_size, zero_stage
        self.every, self.keep = every, keep
        self.signature, self.config, self.config_hash = signature, config, config_hash
        self.last_saved: int | None = None

    # ------------------------------------------------------------------ discovery / resume

    def committed(self) -> list[CommittedTag]:
        """Committed tags of this run, oldest first."""
        return committed_tags(self.root)

    def resolve(self, resume: str) -> ResumeTarget | None:
        """``auto``: newest committed tag here (None: fresh start); ``none``: fresh start;
        a path: that tag folder, or the newest committed tag of a checkpoints/run folder.

        Refuses a checkpoint of another model (:class:`CheckpointMismatchError`) and logs
        every config key that differs from the checkpoint's. Pure file reads, no collective.
        """
        if resume == "none":
            return None
        if resume == "auto":
            tags = self.committed()
            if not tags:
                return None
            src = tags[-1]
        else:
            src = self._tag_from_path(Path(resume))
        self._check_compatible(src)
        universal = src.zero_stage >= 1 and (src.world_size != self.world_size or src.zero_stage != self.zero_stage)
        if universal:
            cache = src.path.parent / (src.tag + UNIVERSAL_SUFFIX)
            return ResumeTarget(src, cache.parent, cache.name, True)
        return ResumeTarget(src, src.path.parent, src.tag, False)

    def _tag_from_path(self, path: Path) -> CommittedTag:
        if not path.exists():
            raise FileNotFoundError(f"checkpoint.resume={str(path)!r} does not exist; expected auto, none, or a tag/run folder")
        m = TAG_PATTERN.match(path.name)
        if m:
            meta = read_commit(path)
            if meta is None:
                raise ValueError(f"checkpoint.resume={str(path)!r} has no {COMMIT_NAME}: the save never finished; "
                                 "expected a committed tag")
            return CommittedTag(path.name, int(m.group(1)), path, meta)
        for root in (path, path / "checkpoints"):
            tags = committed_tags(root)
            if tags:
                return tags[-1]
        raise FileNotFoundError(f"checkpoint.resume={str(path)!r} holds no committed step_XXXXXXXX tag")

    def _check_compatible(self, src: CommittedTag) -> None:
        saved = src.meta.get("signature", {})
        bad = [k for k in ("model", "embed_dim", "image_size") if k in saved and saved.get(k) != self.signature.get(k)]
        if bad:
            def fmt(s):
                return ", ".join(f"{k}={s.get(k)!r}" for k in ("model", "embed_dim", "image_size"))
            raise CheckpointMismatchError(
                f"checkpoint {src.path} is of another model ({fmt(saved)}); this run builds ({fmt(self.signature)}). "
                "Point checkpoint.resume at a checkpoint of the same model, or use checkpoint.resume=none.")
        diff = config_diff(src.meta.get("config", {}), self.config)
        for key, old, new in diff:
            log.info("config differs from checkpoint %s: %s: %r -> %r", src.tag, key, old, new)

    def prepare(self, target: ResumeTarget | None) -> None:
        """Collective. Makes the universal-format copy of ``target`` on rank 0 if needed (cached)."""
        if target is None or not target.universal:
            return
        err = None
        if self.rank == 0:
            try:
                self._convert_universal(target.source, target.load_dir / target.tag)
            except Exception as e:  # every rank must learn of it, not only rank 0
                err = f"universal conversion of {target.source.path} failed: {e}"
        _broadcast_error(err, self.rank)

    def _convert_universal(self, src: CommittedTag, out: Path) -> None:
        if (out / UNIVERSAL_DONE).is_file():
            log.info("using cached universal checkpoint %s", out)
            return
        tmp = out.with_name("." + out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("converting %s (world %d, ZeRO-%d) to universal format for world %d",
                 src.path, src.world_size, src.zero_stage, self.world_size)
        cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(src.path),
               "--output_folder", str(tmp), "--inject_missing_state", "--num_extract_workers", "1",
               "--num_merge_workers", "1"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
        # The converter points a 'latest_universal' file at its (temporary) output; ours is `out`.
        _atomic_write_text(out.parent / "latest_universal", out.name)
        shutil.copy2(src.path / COMMIT_NAME, tmp / COMMIT_NAME)
        _atomic_write_text(tmp / UNIVERSAL_DONE, json.dumps({"source": src.tag, "time": time.time()}))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)

    def load(self, engine, target: ResumeTarget) -> tuple[dict, dict]:
        """Collective. Loads module + optimizer state.

        Returns (the saved ``c2p`` client state, this rank's own saved state or ``{}`` when the
        world size changed: rank r of another world is another data lane).
        """
        path, client = engine.load_checkpoint(str(target.load_dir), tag=target.tag, load_optimizer_states=True,
                                              load_lr_scheduler_states=False)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load {target.load_dir / target.tag}")
        state = dict((client or {}).get("c2p", {}))
        state.setdefault("step", target.source.step)
        dump = os.environ.get(DUMP_ENV)
        if dump:
            engine.save_checkpoint(dump, tag="loaded", client_state={"c2p": state, **_UNIVERSAL_INFO}, save_latest=False)
        rank_state = {}
        rank_file = target.source.path / RANK_STATE.format(rank=self.rank)
        if target.source.world_size == self.world_size and rank_file.is_file():
            rank_state = json.loads(rank_file.read_text())
        log.info("resumed from step %d (%s%s)", state["step"], target.source.path,
                 ", universal format" if target.universal else "")
        return state, rank_state

    # ------------------------------------------------------------------ saving

    def should_save(self, step: int, last: bool = False) -> bool:
        """Every ``every`` steps and at the last step, once per step."""
        return step != self.last_saved and (last or step % self.every == 0)

    def save(self, engine, step: int, state: dict, *, last: bool = False,
             rank_state: Callable[[], dict] | None = None) -> Path | None:
        """Collective: every rank calls it every step; it saves when due.

        ``state``: run state (rank 0's is kept); ``rank_state()``: this rank's own JSON state
        (its data-stream position), written by every rank beside its shard.
        Order: every rank writes its shard -> barrier -> rank 0 writes the commit marker
        (tmp, fsync, rename) -> ``latest`` -> prune old tags. Returns the tag folder if saved.
        """
        if not self.should_save(step, last):
            return None
        tag = tag_name(step)
        tag_dir = self.root / tag
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if tag_dir.exists():  # leftovers of a save that died before its marker: never mix shards
                shutil.rmtree(tag_dir, ignore_errors=True)
        _barrier()
        client = {"c2p": dict(state, step=step), **_UNIVERSAL_INFO}
        engine.save_checkpoint(str(self.root), tag=tag, client_state=client, save_latest=False)
        if rank_state is not None:
            _atomic_write_text(tag_dir / RANK_STATE.format(rank=self.rank), json.dumps(rank_state(), default=str))
        self._maybe_die(step)
        _barrier()  # DeepSpeed's save ends in one too; ours makes the commit rule explicit
        if self.rank == 0:
            for f in tag_dir.rglob("*"):
                if f.is_file():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
            marker = {
                "tag": tag, "step": step, "world_size": self.world_size, "zero_stage": self.zero_stage,
                "signature": self.signature, "config_hash": self.config_hash, "config": self.config,
                "state": client["c2p"], "time": time.time(), "versions": _versions(),
            }
            _atomic_write_text(tag_dir / COMMIT_NAME, json.dumps(marker, indent=1, default=str))
            _atomic_write_text(self.root / LATEST_NAME, tag)
            self._prune()
        self.last_saved = step
        log.info("saved checkpoint %s", tag_dir)
        return tag_dir

    def _maybe_die(self, step: int) -> None:
        spec = os.environ.get(KILL_ENV, "")
        if spec and spec == f"{step}:{self.rank}":
            log.warning("%s=%s: exiting after writing the shard of step %d, before the commit marker", KILL_ENV, spec, step)
            logging.shutdown()
            os._exit(17)

    def _prune(self) -> None:
        """Keep the newest ``keep`` committed tags; drop older ones and uncommitted leftovers.

        A failed delete is logged and skipped: it never stops a save or the run.
        """
        tags = self.committed()
        if not tags:
            return
        keep = {t.tag for t in tags[-self.keep:]}
        newest = tags[-1].step
        for d in self.root.iterdir():
            base = d.name.removesuffix(UNIVERSAL_SUFFIX)
            m = TAG_PATTERN.match(base)
            if not m or base in keep or int(m.group(1)) > newest:
                continue
            try:
                shutil.rmtree(d)
            except OSError as e:
                log.warning("could not delete old checkpoint %s (%s); continuing", d, e)


def _versions() -> dict:
    import deepspeed

    return {"torch": torch.__version__, "deepspeed": deepspeed.__version__, "python": sys.version.split()[0]}


# ---------------------------------------------------------------------- reading a tag's weights


def consolidated_state_dict(tag_dir: str | Path) -> dict[str, torch.Tensor]:
    """fp32 state dict of the whole trainable module of a tag: parameter name -> contiguous fp32
    CPU tensor of the parameter's full (unpartitioned) shape, for any ZeRO stage.

    ZeRO 1-3 (and bf16) tags go through DeepSpeed's own ``zero_to_fp32``; a ZeRO-0 fp32 tag
    holds the full module in its model-states file. :mod:`c2p.train.export` turns it into the
    depth-tower file; it lives here because reading DeepSpeed's tag format (and importing
    DeepSpeed) is this module's job.
    """
    tag_dir = Path(tag_dir)
    if any(tag_dir.glob("*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    else:
        files = sorted(tag_dir.glob("mp_rank_*_model_states.pt"))
        if not files:
            raise FileNotFoundError(f"{tag_dir}: no mp_rank_*_model_states.pt; expected a DeepSpeed tag folder")
        sd = torch.load(files[0], map_location="cpu", weights_only=True)["module"]  # tensors, dicts, strings only
    return {k: v.float().contiguous() for k, v in sd.items()}
