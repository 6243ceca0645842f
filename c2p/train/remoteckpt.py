"""A run's checkpoints mirrored in object storage: ``checkpoint.remote=s3://bucket/prefix``.

Layout under the prefix (the local ``checkpoints/`` folder's, less what is made on demand)::

    step_00000500/<every file the commit marker lists>
    step_00000500/c2p_commit.json      uploaded LAST: a remote tag exists only if its marker does
    latest                             the newest remote committed tag, written after its marker
    export/depth_tower.safetensors     the end-of-training export (and depth_tower.json, probe)

**Who uploads: rank 0, every file of a tag.** The run directory is already a shared filesystem
(rank 0 writes the commit marker beside every rank's shard, and a resume verifies them all), so
rank 0 sees the whole tag. One uploader orders the marker after every file and ``latest`` after
the marker without a collective, and no rank can die leaving its part missing under a committed
remote marker. The price is one node's bandwidth per tag, paid in a background thread
(boto3 uploads each large file in concurrent parts): it stalls training only when an upload
outlasts a checkpoint interval, as the next save waits for the previous upload first.

**Order and crashes.** Files, then the marker, then ``latest``; an upload is retried as a whole
(``UPLOAD_ATTEMPTS``). A crash at any point leaves ``latest`` naming the previous complete tag.
Re-saving a step the remote already holds (a run resumed before it) first moves ``latest`` off
that tag and deletes its marker, so ``latest`` never names a tag whose files are being replaced.

**Keep-K** applies remotely as locally: after each upload the ``keep`` newest committed remote
tags stay, and so does the newest one this process uploaded or downloaded and verified; older
tags lose their marker first (they stop being committed), then their files.

**Resume** (:meth:`RemoteCheckpoints.fetch`): when the run directory holds no committed tag (a new
cluster, a wiped node), the remote ``latest`` (or, failing it, the next newest committed remote
tag) is downloaded into a hidden folder, verified against its marker's sizes and sha256, and
renamed into ``checkpoints/``; the usual resume takes it from there.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path

from c2p import storage
from c2p.fileio import atomic_write_bytes
from c2p.train.ckptverify import CHECKSUM, problems_text, tag_files, verify_files
from c2p.train.retention import expired, tags_to_keep

log = logging.getLogger("c2p.train")

__all__ = ["UPLOAD_ATTEMPTS", "RemoteCheckpoints", "check_remote"]

# Whole-tag upload attempts (each after boto3's own per-request retries), with backoff between them.
UPLOAD_ATTEMPTS = int(os.environ.get("C2P_CKPT_UPLOAD_ATTEMPTS", "4"))
UPLOAD_BACKOFF_S = float(os.environ.get("C2P_CKPT_UPLOAD_BACKOFF_S", "5"))
_COMMIT, _LATEST, _EXPORT = "c2p_commit.json", "latest", "export"


def check_remote(url: str) -> str:
    """``url`` without a trailing '/'; ValueError unless it is an ``s3://bucket[/prefix]`` address."""
    if not storage.is_remote(url):
        raise ValueError(f"{url!r}: expected an s3://bucket/prefix address")
    storage.S3Path.parse(url)
    return url.rstrip("/")


def _is_tag(name: str) -> bool:
    # lazy: checkpoint.py holds this module's objects
    from c2p.train.checkpoint import TAG_PATTERN

    return bool(TAG_PATTERN.match(name))


class RemoteCheckpoints:
    """The object-storage mirror of one run's checkpoints (used by rank 0 only)."""

    def __init__(self, url: str, keep: int):
        self.url, self.keep = check_remote(url), keep
        self.trusted: set[str] = set()  # uploaded or downloaded-and-verified by this process
        self._thread: threading.Thread | None = None
        self._failed: str | None = None  # the last background upload's error

    def _at(self, *parts: str) -> str:
        return "/".join([self.url, *parts])

    # ------------------------------------------------------------------ listing

    def tree(self) -> dict[str, int]:
        """``{relative key: size}`` of every object under the prefix."""
        return storage.list_tree(self.url)

    @staticmethod
    def committed(tree: dict[str, int]) -> list[str]:
        """Tags of ``tree`` with a commit marker, oldest first."""
        return sorted({k.split("/")[0] for k in tree if k.count("/") == 1 and k.endswith("/" + _COMMIT) and _is_tag(k.split("/")[0])})

    def latest(self) -> str | None:
        """The newest remote committed tag (None: none)."""
        tags = self.committed(self.tree())
        return tags[-1] if tags else None

    # ------------------------------------------------------------------ upload

    def upload_async(self, tag_dir: Path) -> None:
        """Upload the committed tag ``tag_dir`` in a background thread, after the previous upload ended."""
        self.wait()
        self._thread = threading.Thread(target=self._upload_logged, args=(Path(tag_dir),), name=f"upload {tag_dir.name}",
                                        daemon=True)
        self._thread.start()

    def wait(self) -> str | None:
        """Wait for the background upload; its error (None: it succeeded or there was none)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        failed, self._failed = self._failed, None
        return failed

    def _upload_logged(self, tag_dir: Path) -> None:
        try:
            self.upload(tag_dir)
        except Exception as exn:  # the run goes on: its checkpoints are intact locally
            self._failed = f"upload of {tag_dir.name} to {self.url} failed: {exn}"
            log.warning("%s; the remote keeps its previous latest tag, training continues", self._failed)

    def upload(self, tag_dir: Path, attempts: int | None = None) -> None:
        """Upload committed tag ``tag_dir`` (files, marker, ``latest``), then prune; up to ``attempts``
        (default ``UPLOAD_ATTEMPTS``) tries."""
        attempts = attempts or UPLOAD_ATTEMPTS
        for attempt in range(1, attempts + 1):
            try:
                self._upload_once(tag_dir)
                break
            except OSError as exn:
                if attempt == attempts:
                    raise
                delay = UPLOAD_BACKOFF_S * 2 ** (attempt - 1)
                log.warning("upload of %s to %s failed (%s); retrying in %.0f s (%d/%d)", tag_dir.name, self.url, exn, delay,
                            attempt, attempts - 1)
                time.sleep(delay)
        try:
            self.prune()
        except OSError as exn:  # an old tag left behind costs space, never the run
            log.warning("could not prune old checkpoints in %s (%s); continuing", self.url, exn)

    def _upload_once(self, tag_dir: Path) -> None:
        t0, tag = time.perf_counter(), tag_dir.name
        meta = json.loads((tag_dir / _COMMIT).read_text())
        files = sorted(meta["files"]) if isinstance(meta.get("files"), dict) else tag_files(tag_dir, (_COMMIT,))
        tree = self.tree()
        if f"{tag}/{_COMMIT}" in tree:
            self._uncommit(tag, tree)
        for rel in files:
            storage.put_file(tag_dir / rel, self._at(tag, rel))
        stale = [k for k in tree if k.startswith(tag + "/") and k[len(tag) + 1:] not in files and not k.endswith("/" + _COMMIT)]
        storage.delete([self._at(k) for k in stale])  # an earlier upload's files the marker does not list
        storage.put_file(tag_dir / _COMMIT, self._at(tag, _COMMIT))
        storage.put_bytes(tag.encode(), self._at(_LATEST))
        self.trusted.add(tag)
        size = sum((tag_dir / rel).stat().st_size for rel in files)
        took = time.perf_counter() - t0
        log.info("uploaded %s to %s: %d files, %.1f MB in %.1f s (%.0f MB/s)", tag, self.url, len(files), size / 1e6, took,
                 size / 1e6 / max(took, 1e-9))

    def _uncommit(self, tag: str, tree: dict[str, int]) -> None:
        """``tag`` is about to be replaced: ``latest`` moves to the newest other committed tag, then its marker goes."""
        others = [t for t in self.committed(tree) if t != tag]
        if storage.exists(self._at(_LATEST)) and storage.read_bytes(self._at(_LATEST)).decode().strip() == tag:
            if others:
                storage.put_bytes(others[-1].encode(), self._at(_LATEST))
            else:
                storage.delete([self._at(_LATEST)])
        storage.delete([self._at(tag, _COMMIT)])

    def prune(self) -> list[str]:
        """Keep-K in the mirror (:mod:`c2p.train.retention`, the run directory's rule): delete older
        tags (marker first) and older uncommitted leftovers. Returns the tags deleted."""
        tree = self.tree()
        tags = self.committed(tree)
        if not tags:
            return []
        kept = tags_to_keep(tags, self.keep, self.trusted)
        gone = expired({k.split("/")[0] for k in tree if "/" in k and _is_tag(k.split("/")[0])}, tags, kept)
        for tag in gone:
            keys = sorted((k for k in tree if k.startswith(tag + "/")), key=lambda k: not k.endswith("/" + _COMMIT))
            storage.delete([self._at(k) for k in keys])
        if gone:
            log.info("deleted old checkpoints from %s: %s", self.url, ", ".join(gone))
        return gone

    def upload_export(self, export_dir: Path) -> list[str]:
        """Every file of ``export_dir`` to ``<remote>/export/``, the ``.json`` record last; returns the addresses."""
        names = sorted((p.name for p in Path(export_dir).iterdir() if p.is_file() and not p.name.endswith(".tmp")),
                       key=lambda n: (n.endswith(".json"), n))
        for name in names:
            storage.put_file(Path(export_dir) / name, self._at(_EXPORT, name))
        log.info("uploaded the export to %s", self._at(_EXPORT))
        return [self._at(_EXPORT, n) for n in names]

    # ------------------------------------------------------------------ download

    def fetch(self, root: Path) -> str | None:
        """Download the newest remote committed tag that verifies into ``root`` (the local
        ``checkpoints/`` folder) and point ``root/latest`` at it; returns its name (None: the
        remote holds no committed tag). Tries ``latest`` first, then older committed tags,
        warning about each that fails verification; raises ValueError when none verifies."""
        tree = self.tree()
        tags = self.committed(tree)
        if not tags:
            return None
        named = storage.read_bytes(self._at(_LATEST)).decode().strip() if _LATEST in tree else ""
        order = ([named] if named in tags else []) + [t for t in reversed(tags) if t != named]
        failed = []
        for tag in order:
            problems = self._fetch_tag(tag, Path(root))
            if not problems:
                self.trusted.add(tag)
                return tag
            failed.append(f"{tag} ({problems})")
            log.warning("remote checkpoint %s fails verification after download, not resuming from it: %s",
                        self._at(tag), problems)
        raise ValueError(f"no committed tag in {self.url} verifies after download: {'; '.join(failed)}; expected at "
                         "least one intact tag")

    def _fetch_tag(self, tag: str, root: Path) -> str:
        """Download ``tag`` and verify it; '' when intact and in place, else its problems."""
        t0 = time.perf_counter()
        raw = storage.read_bytes(self._at(tag, _COMMIT))
        meta = json.loads(raw)
        files = meta.get("files")
        if not isinstance(files, dict) or meta.get("checksum") != CHECKSUM:
            return f"its marker lists no {CHECKSUM} checksums, so a download cannot be verified"
        tmp = root / f".{tag}.download"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            for rel in sorted(files):
                storage.get_file(self._at(tag, rel), tmp / rel)
        except FileNotFoundError as exn:
            shutil.rmtree(tmp, ignore_errors=True)
            return f"{exn} (the marker lists it)"
        problems = verify_files(tmp, files)
        if problems:
            shutil.rmtree(tmp, ignore_errors=True)
            return problems_text(problems)
        atomic_write_bytes(tmp / _COMMIT, raw)  # the marker last, as at the save
        shutil.rmtree(root / tag, ignore_errors=True)
        os.replace(tmp, root / tag)
        atomic_write_bytes(root / _LATEST, tag.encode())
        size = sum(f["size"] for f in files.values())
        log.info("downloaded %s from %s: %d files, %.1f MB in %.1f s, verified", tag, self.url, len(files), size / 1e6,
                 time.perf_counter() - t0)
        return ""


# ---------------------------------------------------------------------- collectives (every rank calls them)


def _from_rank0(value):
    """Rank 0's ``value`` on every rank (itself without a process group). A collective."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return value


def fetch_for_resume(mirror: RemoteCheckpoints, root: Path, rank: int, needed: bool) -> str | None:
    """Collective: when rank 0 says it is ``needed`` (``root`` holds no committed tag), rank 0
    downloads the remote tag to resume from (:meth:`RemoteCheckpoints.fetch`); every rank gets
    its name (None: nothing fetched) or raises rank 0's error."""
    result: tuple[str | None, str | None] = (None, None)
    if rank == 0 and needed:
        log.info("no committed checkpoint in %s: looking in %s", root, mirror.url)
        try:
            result = (mirror.fetch(root), None)
        except (OSError, ValueError, KeyError) as exn:  # every rank must learn of it, not only rank 0
            result = (None, f"resume from {mirror.url} failed: {type(exn).__name__}: {exn}")
    tag, error = _from_rank0(result)
    if error:
        raise RuntimeError(error)
    return tag


def finish_uploads(mirror: RemoteCheckpoints, newest: Path | None, export_dir: Path | None, rank: int) -> None:
    """Collective, at the end of a run: rank 0 waits for the background upload, uploads the newest
    local tag ``newest`` when the remote does not hold it as its newest (a failed upload, or a
    re-run that had nothing left to train), then the export folder. Every rank raises when the
    remote could not be brought up to date: the job must not end as if it were."""
    error = None
    if rank == 0:
        try:
            failed = mirror.wait()
            if newest is not None and (failed or mirror.latest() != newest.name):
                log.info("uploading %s to %s before the run ends", newest.name, mirror.url)
                mirror.upload(newest)
            if export_dir is not None and Path(export_dir).is_dir():
                mirror.upload_export(Path(export_dir))
        except OSError as exn:
            error = (f"the run's checkpoints are complete in {newest.parent if newest else '?'} but not in {mirror.url}: "
                     f"{exn}; run the same command again once the store answers (it resumes at the last step and uploads)")
    error = _from_rank0(error)
    if error:
        raise RuntimeError(error)
