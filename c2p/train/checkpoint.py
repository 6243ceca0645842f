"""Sharded DeepSpeed checkpoints that resume exactly, survive crashes and change world size.

Layout under ``<run>/checkpoints/``::

    step_00000500/                 a DeepSpeed tag (one shard file per rank + model states)
        c2p_commit.json            commit marker: written LAST, after every rank finished; lists
                                   size and sha256 of every file of the tag (c2p.train.ckptverify)
    step_00000500_universal/       universal-format cache (made on demand for another world size)
    latest                         newest committed tag name (DeepSpeed's format; written after the marker)
    zero_to_fp32.py                DeepSpeed's own recovery script (copied by DeepSpeed)

A tag exists only if its commit marker does: discovery ignores folders without it, so a
save killed mid-write is never resumed from, and a tag is only loaded after its files match
the marker: a damaged newest tag is skipped, with a warning naming the file, for the newest one
that verifies. Every load of a tag's files is weights-only (:mod:`c2p.train.ckptload`): a
checkpoint file cannot run code. With a ``mirror`` (``checkpoint.remote``,
:mod:`c2p.train.remoteckpt`) each committed tag is also uploaded, and a run directory without
a committed tag resumes from the remote's. :class:`CheckpointManager` owns the whole
policy (when to save, commit, ``latest``, keep-K with :mod:`c2p.train.retention`'s rule, what
to resume from, conversion); the training loop only calls ``resolve``/``prepare``/``load`` once
and ``save`` every step.
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
from c2p.fileio import TMP_SUFFIX, atomic_write_bytes
from c2p.train.ckptverify import (CHECKSUM, FileProblem, all_gather_objects, build_manifest, dist_place,
                                  gather_objects_to_rank0, hash_own_files, problems_text, verify_files, verify_marker)
from c2p.train.placement import describe_resume
from c2p.train.retention import expired, tags_to_keep

log = logging.getLogger("c2p.train")

__all__ = [
    "TAG_PATTERN", "COMMIT_NAME", "LATEST_NAME", "KILL_ENV", "DUMP_ENV", "tag_name", "CommittedTag", "ResumeTarget",
    "CheckpointMismatchError", "CheckpointIntegrityError", "CheckpointManager", "committed_tags", "read_commit",
    "verify_tag",
]

TAG_PATTERN = re.compile(r"^step_(\d{8})$")
COMMIT_NAME = "c2p_commit.json"
LATEST_NAME = "latest"
UNIVERSAL_SUFFIX = "_universal"
UNIVERSAL_DONE = "c2p_universal.json"
RANK_STATE = "c2p_rank{rank:05d}.json"
# Files of a tag folder the manifest does not list: the marker itself (and its tmp while written).
_NOT_HASHED = (COMMIT_NAME, COMMIT_NAME + TMP_SUFFIX)
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


class CheckpointIntegrityError(ValueError):
    """A committed tag whose files do not match its commit marker (missing, truncated, altered)."""


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


def read_commit_file(path: Path) -> dict | None:
    """A marker file's JSON object, or None when it is absent or unreadable."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def read_commit(tag_dir: Path) -> dict | None:
    """The commit marker (JSON) of a tag folder, or None when the tag was never committed."""
    return read_commit_file(tag_dir / COMMIT_NAME)


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


def verify_tag(tag: CommittedTag, share: tuple[int, int] = (0, 1)) -> list[FileProblem] | None:
    """Files of ``tag`` that do not match its commit marker (``[]``: intact); None for a tag
    committed before markers listed checksums. ``share``: see :func:`c2p.train.ckptverify.verify_files`."""
    return verify_marker(tag.path, tag.meta, share=share, skip=_NOT_HASHED)


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
                 signature: dict, config: dict, config_hash: str, mirror=None, hosts: list[str] | None = None):
        self.root = Path(root)
        self.hosts = hosts or []  # every rank's host, rank order (c2p.train.placement): recorded in each marker
        self.rank, self.world_size, self.zero_stage = rank, world_size, zero_stage
        self.every, self.keep = every, keep
        self.signature, self.config, self.config_hash = signature, config, config_hash
        self.mirror = mirror  # a RemoteCheckpoints (checkpoint.remote), or None
        self.last_saved: int | None = None
        # Tags known good (verified at resume, or written and hashed by this process) and known
        # damaged (failed verification): pruning never deletes the newest good one or a damaged one.
        self.trusted: set[str] = set()
        self.damaged: set[str] = set()

    # ------------------------------------------------------------------ discovery / resume

    def committed(self) -> list[CommittedTag]:
        """Committed tags of this run, oldest first."""
        return committed_tags(self.root)

    def resolve(self, resume: str) -> ResumeTarget | None:
        """``auto``: newest committed tag here that verifies (None: fresh start); ``none``: fresh
        start; a path: that tag folder, or the newest verifying tag of a checkpoints/run folder.

        A collective when a process group is up: the ranks split the hashing of each candidate
        tag and agree on the verdict. A damaged newest tag is skipped with a warning naming the
        file; a damaged tag asked for by path, or a folder where no tag verifies, raises
        :class:`CheckpointIntegrityError`. Refuses a checkpoint of another model
        (:class:`CheckpointMismatchError`) and logs every config key that differs from it.
        """
        if resume == "none":
            return None
        if resume == "auto":
            if self.mirror is not None:  # a new cluster or a wiped node: the remote's latest
                from c2p.train.remoteckpt import fetch_for_resume

                # rank 0's view decides: another rank listing the folder after rank 0's download would not fetch
                fetched = fetch_for_resume(self.mirror, self.root, self.rank, needed=self.rank == 0 and not self.committed())
                self.trusted |= {fetched} if fetched else set()  # verified by the download: not hashed again
            src = self._newest_intact(self.committed(), self.root)
            if src is None:
                return None
        else:
            src = self._tag_from_path(Path(resume))
        self._check_compatible(src)
        universal = src.zero_stage >= 1 and (src.world_size != self.world_size or src.zero_stage != self.zero_stage)
        if universal:
            cache = src.path.parent / (src.tag + UNIVERSAL_SUFFIX)
            return ResumeTarget(src, cache.parent, cache.name, True)
        return ResumeTarget(src, src.path.parent, src.tag, False)

    def _verify(self, tag: CommittedTag) -> list[str] | None:
        """Collective: the problems of ``tag`` found by all ranks together (None: no checksums to check)."""
        t0, (rank, world) = time.perf_counter(), dist_place()
        mine = verify_tag(tag, share=(rank, world))
        found = all_gather_objects(None if mine is None else [str(p) for p in mine])
        if found[0] is None:
            return None
        problems = [p for part in found for p in part]
        files = tag.meta["files"]
        log.info("verified %s: %d files, %.1f MB, %s in %.2f s", tag.tag, len(files),
                 sum(f["size"] for f in files.values()) / 1e6, "intact" if not problems else "DAMAGED",
                 time.perf_counter() - t0)
        return problems

    def _accept(self, tag: CommittedTag) -> list[str] | None:
        """Verify ``tag`` (collective) and record the verdict; returns its problems (None: unverifiable)."""
        if tag.tag in self.trusted:  # every rank knows it (a download verified against the marker)
            return []
        problems = self._verify(tag)
        if problems is None:
            log.warning("checkpoint %s was committed without checksums (before c2p verified checkpoints): "
                        "loading it unverified", tag.path)
        elif problems:
            self.damaged.add(tag.tag)
        else:
            self.trusted.add(tag.tag)
        return problems

    def _newest_intact(self, tags: list[CommittedTag], where: Path) -> CommittedTag | None:
        """The newest of ``tags`` that verifies, warning about each newer one that does not."""
        skipped = []
        for tag in reversed(tags):
            problems = self._accept(tag)
            if not problems:
                if skipped:
                    log.warning("resuming from %s, the newest committed tag that verifies (skipped: %s)", tag.tag,
                                ", ".join(skipped))
                return tag
            skipped.append(tag.tag)
            log.warning("checkpoint %s fails verification, not resuming from it: %s", tag.path, problems_text(problems))
        if skipped:
            raise CheckpointIntegrityError(
                f"no committed tag in {where} verifies ({', '.join(skipped)} are damaged; see the warnings above); "
                "expected at least one intact tag. Restore the files, resume from another run's tag, or start over "
                "with checkpoint.resume=none")
        return None

    def _tag_from_path(self, path: Path) -> CommittedTag:
        if not path.exists():
            raise FileNotFoundError(f"checkpoint.resume={str(path)!r} does not exist; expected auto, none, or a tag/run folder")
        m = TAG_PATTERN.match(path.name)
        if m:
            meta = read_commit(path)
            if meta is None:
                raise ValueError(f"checkpoint.resume={str(path)!r} has no {COMMIT_NAME}: the save never finished; "
                                 "expected a committed tag")
            tag = CommittedTag(path.name, int(m.group(1)), path, meta)
            problems = self._accept(tag)
            if problems:
                raise CheckpointIntegrityError(
                    f"checkpoint.resume={str(path)!r} fails verification: {problems_text(problems)}; expected a tag whose "
                    "files match its commit marker (use checkpoint.resume=auto for the newest intact tag)")
            return tag
        for root in (path, path / "checkpoints"):
            tags = committed_tags(root)
            if tags:
                return self._newest_intact(tags, root)
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
        """Rank 0: ``src`` (verified by :meth:`resolve`) in universal format at ``out``, reusing a
        cache whose files still match the manifest in its done-marker."""
        done = read_commit_file(out / UNIVERSAL_DONE)
        if done is not None:
            problems = verify_files(out, done.get("files", {}), skip=(UNIVERSAL_DONE,)) if "files" in done else None
            if problems is None or not problems:
                log.info("using cached universal checkpoint %s%s", out, "" if problems is not None else " (unverified)")
                return
            log.warning("cached universal checkpoint %s fails verification (%s): converting %s again", out,
                        problems_text(problems), src.tag)
        tmp = out.with_name("." + out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("converting %s (world %d, ZeRO-%d) to universal format for world %d",
                 src.path, src.world_size, src.zero_stage, self.world_size)
        # DeepSpeed's converter, run with weights-only loads (it calls torch.load(weights_only=False) itself)
        cmd = [sys.executable, "-m", "c2p.train.ckptload", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(src.path),
               "--output_folder", str(tmp), "--inject_missing_state", "--num_extract_workers", "1",
               "--num_merge_workers", "1"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
        # The converter points a 'latest_universal' file at its (temporary) output; ours is `out`.
        _atomic_write_text(out.parent / "latest_universal", out.name)
        shutil.copy2(src.path / COMMIT_NAME, tmp / COMMIT_NAME)
        files = build_manifest(tmp, [], skip=(UNIVERSAL_DONE,))
        _atomic_write_text(tmp / UNIVERSAL_DONE, json.dumps({"source": src.tag, "time": time.time(), "checksum": CHECKSUM,
                                                             "files": files}))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)

    def load(self, engine, target: ResumeTarget) -> tuple[dict, dict]:
        """Collective. Loads module + optimizer state.

        Returns (the saved ``c2p`` client state, this rank's own saved state or ``{}`` when the
        world size changed: rank r of another world is another data lane).
        """
        from c2p.train.ckptload import weights_only_loads

        with weights_only_loads():  # DeepSpeed's own loads included: a tag's files cannot run code
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
        log.info("%s", describe_resume(dict(target.source.meta, step=state["step"]), self.world_size, self.hosts,
                                       f"{target.source.path}{', universal format' if target.universal else ''}"))
        return state, rank_state

    # ------------------------------------------------------------------ saving

    def should_save(self, step: int, last: bool = False) -> bool:
        """Every ``every`` steps and at the last step, once per step."""
        return step != self.last_saved and (last or step % self.every == 0)

    def save(self, engine, step: int, state: dict, *, last: bool = False,
             rank_state: Callable[[], dict] | None = None, before: Callable[[], None] | None = None) -> Path | None:
        """Collective: every rank calls it every step; it saves when due.

        ``state``: run state (rank 0's is kept); ``rank_state()``: this rank's own JSON state
        (its data-stream position), written by every rank beside its shard; ``before()``: a
        collective check run before anything is written (it raises to refuse the save, e.g.
        non-finite weights). Order: every rank writes its shard, fsyncs and hashes its own files
        -> gather to rank 0 -> rank 0 writes the commit marker with the manifest (tmp, fsync,
        rename) -> ``latest`` -> prune old tags. Returns the tag folder if saved.
        """
        if not self.should_save(step, last):
            return None
        if before is not None:
            before()
        tag = tag_name(step)
        tag_dir = self.root / tag
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if tag_dir.exists():  # leftovers of a save that died before its marker: never mix shards
                if tag in self.damaged:
                    log.warning("replacing the damaged checkpoint %s by a new save of step %d", tag_dir, step)
                shutil.rmtree(tag_dir, ignore_errors=True)
                self.damaged.discard(tag)
        _barrier()
        client = {"c2p": dict(state, step=step), **_UNIVERSAL_INFO}
        engine.save_checkpoint(str(self.root), tag=tag, client_state=client, save_latest=False)
        if rank_state is not None:
            _atomic_write_text(tag_dir / RANK_STATE.format(rank=self.rank), json.dumps(rank_state(), default=str))
        self._maybe_die(step)
        own = hash_own_files(tag_dir, self.rank, self.world_size, skip=_NOT_HASHED)  # hot in the page cache
        # The gather is the commit rule's barrier: rank 0 goes on only once every rank's files are written.
        parts = gather_objects_to_rank0(own)
        if self.rank == 0:
            marker = {
                "tag": tag, "step": step, "world_size": self.world_size, "hosts": self.hosts, "zero_stage": self.zero_stage,
                "signature": self.signature, "config_hash": self.config_hash, "config": self.config,
                "state": client["c2p"], "time": time.time(), "versions": _versions(),
                "checksum": CHECKSUM, "files": build_manifest(tag_dir, parts, skip=_NOT_HASHED),
            }
            _atomic_write_text(tag_dir / COMMIT_NAME, json.dumps(marker, indent=1, default=str))
            _atomic_write_text(self.root / LATEST_NAME, tag)
            self.trusted.add(tag)
            if self.mirror is not None:  # waits for the previous upload, so _prune never deletes a tag being uploaded
                self.mirror.upload_async(tag_dir)
            self._prune()
        self.last_saved = step
        log.info("saved checkpoint %s", tag_dir)
        return tag_dir

    def finish(self, export_dir: Path | None = None) -> None:
        """Collective, at the end of a run: with a mirror, the newest tag and ``export_dir`` are in it when this returns."""
        if self.mirror is not None:
            from c2p.train.remoteckpt import finish_uploads

            tags = self.committed() if self.rank == 0 else []
            finish_uploads(self.mirror, tags[-1].path if tags else None, export_dir, self.rank)

    def _maybe_die(self, step: int) -> None:
        spec = os.environ.get(KILL_ENV, "")
        if spec and spec == f"{step}:{self.rank}":
            log.warning("%s=%s: exiting after writing the shard of step %d, before the commit marker", KILL_ENV, spec, step)
            logging.shutdown()
            os._exit(17)

    def _prune(self) -> None:
        """Keep-K in the run directory (:mod:`c2p.train.retention`: the newest ``keep`` tags not
        known damaged, the newest known good one, damaged ones for the operator); older tags,
        their universal caches and uncommitted leftovers go. A failed delete is logged and
        skipped: it never stops a save or the run."""
        tags = [t.tag for t in self.committed()]
        kept = tags_to_keep(tags, self.keep, self.trusted, self.damaged)
        folders = {d: d.name.removesuffix(UNIVERSAL_SUFFIX) for d in self.root.iterdir() if d.is_dir()}
        gone = set(expired([b for b in folders.values() if TAG_PATTERN.match(b)], tags, kept))
        for d, base in sorted(folders.items()):
            if base not in gone:
                continue
            try:
                shutil.rmtree(d)
            except OSError as e:
                log.warning("could not delete old checkpoint %s (%s); continuing", d, e)


def _versions() -> dict:
    import deepspeed

    return {"torch": torch.__version__, "deepspeed": deepspeed.__version__, "python": sys.version.split()[0]}
