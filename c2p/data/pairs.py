"""Image–text pair shards for open_clip's trainer, exported from c2p object shards.

A c2p sample is one 3D object with V RGB views and one caption (``c2p.schema``). CLIP
training wants one image and one caption per sample, in the WebDataset layout that
open_clip_train's ``--dataset-type webdataset`` reads:

| member        | content                                                     |
|---------------|-------------------------------------------------------------|
| ``__key__``   | ``<object key>_v<view>`` (no dots)                          |
| ``png``       | the view's RGB render, the object shard's bytes unchanged (``webp``/``jpg`` if stored so) |
| ``txt``       | the object's caption (``txt`` member, else ``meta.json`` caption, else ``caption_template`` with the label) |

The output directory holds ``pairs-NNNNNN.tar`` shards (written atomically by
:class:`c2p.schema.ShardWriter`), ``sizes.json`` (shard name → samples: open_clip_train's
epoch length when ``--train-num-samples`` is left out) and ``pairs.json`` (totals, the
brace pattern to pass as ``--train-data``, and the sources). Sources and output may be
``s3://bucket/prefix`` addresses: object shards are then streamed from the bucket, and pair
shards written in a local stage (:mod:`c2p.storage.stage`) and uploaded each as one object once
complete, ``sizes.json`` and ``pairs.json`` last, so a reader never sees part of a tar, nor a
``pairs.json`` naming a tar that is not there yet. Object shards are read with
the loader's reader (:func:`c2p.data.reader.read_shard`); corrupt ones are counted and
skipped, never fatal, and so is an object whose caption members do not decode (``corrupt_samples``).
Objects whose key is absolute or has a ``..`` component are refused (:func:`unsafe_key`,
listed in ``pairs.json``): the output tars never carry such names.

    python -m c2p.data.pairs --shards runs/demo/shards/train --out runs/demo/pairs
    python -m c2p.data.pairs --shards s3://data/syn/train --out s3://data/syn/pairs
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from c2p import storage
from c2p.data.reader import CorruptSample, decode_member, read_shard
from c2p.fileio import atomic_write_bytes
from c2p.schema import ShardIndex, ShardWriter, SampleMeta
from c2p.sharddir import INDEX_NAME, ShardDir
from c2p.storage.stage import fresh_stage

PAIR_PATTERN = "pairs-{:06d}.tar"
PAIR_GLOB = "pairs-*.tar"
SIZES_NAME = "sizes.json"
PAIRS_NAME = "pairs.json"
IMAGE_EXTS = ("png", "webp", "jpg")

log = logging.getLogger(__name__)


@dataclass
class PairExport:
    """Summary of one export (also written as ``pairs.json``)."""

    out: str
    train_data: str  # brace pattern of the tars, e.g. ".../pairs-{000000..000003}.tar"
    num_samples: int = 0  # image–text pairs written
    objects: int = 0  # objects read
    shards: dict[str, int] = field(default_factory=dict)  # pair shard name → pairs
    corrupt_shards: list[str] = field(default_factory=list)  # object shards that could not be read
    corrupt_samples: list[str] = field(default_factory=list)  # objects skipped: a member that does not decode (shard, key, member)
    skipped_objects: int = 0  # objects without RGB views or caption source
    unsafe_keys: list[str] = field(default_factory=list)  # objects refused for an absolute or '..' key
    sources: list[str] = field(default_factory=list)


def object_shard_paths(sources: Sequence[str | Path]) -> list[str]:
    """Tar paths (or ``s3://`` addresses) of object shards: a directory or prefix with ``index.json``
    gives its listed shards, a ``.tar`` file or object itself. Raises FileNotFoundError naming a
    missing source (and, in a bucket, the missing object), ValueError for a malformed address."""
    paths: list[str] = []
    for src in sources:
        if storage.is_remote(src):
            paths += _remote_shard_urls(str(src))
            continue
        src = Path(src)
        if src.is_dir() and ShardDir(src).index.is_file():
            paths += ShardIndex.load(src).shard_paths(src)
        elif src.is_file() and src.suffix == ".tar":
            paths.append(str(src))
        else:
            raise FileNotFoundError(f"object shard source {str(src)!r} is neither a shard directory with "
                                    f"{INDEX_NAME} nor a .tar file")
    return paths


def _remote_shard_urls(src: str) -> list[str]:
    """:func:`object_shard_paths` of one ``s3://`` source: a ``.tar`` object (one HEAD) or a prefix
    whose ``index.json`` lists the shards (one GET). The tars themselves are not checked here: one
    that is missing is a corrupt shard of the export, as a missing local tar is."""
    expected = f"expected an s3:// shard prefix with {INDEX_NAME} (c2p-render --out s3://...) or a .tar object"
    if src.endswith(".tar"):
        storage.check_url(src, "object")
        if not storage.exists(src):
            raise FileNotFoundError(f"object shard source {src!r} does not exist; {expected}")
        return [src]
    storage.check_url(src, "prefix")
    index_url = storage.join(src, INDEX_NAME)
    try:
        index = ShardIndex.from_json(storage.read_bytes(index_url), index_url)
    except FileNotFoundError:
        raise FileNotFoundError(f"object shard source {src!r}: {index_url} does not exist; {expected}") from None
    return [storage.join(src, name) for name in sorted(index.shards)]


def caption_of(sample: dict[str, bytes], template: str) -> str:
    """The object's caption: ``txt`` member, else ``meta.json``'s caption, else ``template``
    formatted with the label (``"{label}"``); "" if none of these exist. Raises
    :class:`~c2p.data.reader.CorruptSample` when the member it reads does not decode."""
    if sample.get("txt"):
        return decode_member(sample, "txt", bytes.decode).strip()
    if "meta.json" in sample:
        meta = decode_member(sample, "meta.json", SampleMeta.from_json)
        if meta.caption:
            return meta.caption.strip()
        if template and meta.label:
            return template.format(label=meta.label)
    return ""


def unsafe_key(key: str) -> str:
    """Why ``key`` (a sample key from an input tar) must not name output members, or "" if it may.

    Refused: absolute keys (``/x``) and keys with a ``..`` component, which would make the output
    tar's member names escape the directory it is extracted into. They are refused rather than
    rewritten: no writer of c2p shards makes such keys, and a rewritten key (``/a/b`` → ``a/b``)
    could collide with another object's real key and shadow it without a trace.
    """
    if key.startswith("/") or key.startswith("\\"):
        return "absolute"
    if ".." in key.replace("\\", "/").split("/"):
        return "has a '..' component"
    return ""


def image_members(sample: dict[str, bytes], views: Sequence[int] | None) -> list[tuple[int, str, str]]:
    """``(view, member, ext)`` of the RGB views to export, sorted by view."""
    found = []
    for name in sample:
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "rgb" and parts[1].isdigit() and parts[2] in IMAGE_EXTS:
            v = int(parts[1])
            if views is None or v in views:
                found.append((v, name, parts[2]))
    return sorted(found)


def export_pairs(sources: Sequence[str | Path], out: str | Path, *, samples_per_shard: int = 2000,
                 views: Sequence[int] | None = None, caption_template: str = "a {label}") -> PairExport:
    """Write image–text pair shards for every RGB view of every object in ``sources``.

    ``sources``: object shard directories (with ``index.json``) or ``.tar`` files, local or
    ``s3://``; ``out``: a directory or an ``s3://bucket/prefix``; ``views``: view indices to
    export (None: all); ``caption_template``: caption for objects that have none, formatted with
    ``label``. A previous export in ``out`` is replaced: its ``pairs.json`` is removed first, then
    its tars. In a bucket each tar appears whole (staged locally, one upload) and ``pairs.json``
    after every tar it names.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard {samples_per_shard!r}; expected >= 1")
    remote = storage.is_remote(out)
    if remote:
        storage.check_url(str(out), "prefix")
        out = str(out).rstrip("/")
    else:
        out = Path(out)
    tar_paths = object_shard_paths(sources)  # a missing source fails before anything is written or deleted
    local = fresh_stage(out) if remote else out
    local.mkdir(parents=True, exist_ok=True)
    _remove_export(out)
    summary = PairExport(out=str(out), train_data="", sources=[str(s) for s in sources])
    writer: ShardWriter | None = None

    def finish() -> None:
        """Close the tar being written and, for a bucket, upload it as one object and drop the local copy."""
        nonlocal writer
        assert writer is not None
        done, writer = writer, None
        done.close()
        summary.shards[done.path.name] = done.count
        if remote:
            storage.put_file(done.path, storage.join(out, done.path.name))
            done.path.unlink()

    try:
        for tar_path in tar_paths:
            samples = read_shard(tar_path)
            while True:
                try:
                    sample = next(samples)
                except StopIteration:
                    break
                except Exception as e:  # any read failure is the shard's fault, as in the loader:
                    # a truncated or corrupt shard is counted and its rest skipped; the export goes on
                    # (the objects read before the damage are whole: a sample ends where the next key starts)
                    summary.corrupt_shards.append(f"{tar_path}: {type(e).__name__}: {e}")
                    break
                summary.objects += 1
                if why := unsafe_key(sample["__key__"]):
                    summary.unsafe_keys.append(f"{tar_path}: {sample['__key__']!r} ({why})")
                    log.warning("pairs: refusing object %r of %s: its key is %s", sample["__key__"], tar_path, why)
                    continue
                try:
                    caption = caption_of(sample, caption_template)
                except CorruptSample as e:  # garbage in one object: counted, named, skipped
                    summary.corrupt_samples.append(str(e))
                    continue
                members = image_members(sample, views)
                if not caption or not members:
                    summary.skipped_objects += 1
                    continue
                for v, name, ext in members:
                    if writer is not None and writer.count >= samples_per_shard:
                        finish()
                    if writer is None:
                        writer = ShardWriter(local / PAIR_PATTERN.format(len(summary.shards)))
                    writer.write({"__key__": f"{sample['__key__']}_v{v}", ext: sample[name], "txt": caption.encode()})
                    summary.num_samples += 1
        if writer is not None:
            finish()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if not summary.shards:
        raise ValueError(f"no image–text pairs in {summary.sources}: {summary.objects} objects read, "
                         f"{summary.skipped_objects} without RGB views or caption, {len(summary.unsafe_keys)} with unsafe keys, "
                         f"{len(summary.corrupt_shards)} corrupt shards, {len(summary.corrupt_samples)} corrupt objects; "
                         "expected objects with rgb.<v>.png and a caption")
    n = len(summary.shards)
    summary.train_data = storage.join(out, PAIR_PATTERN.format(0) if n == 1 else "pairs-{" + f"{0:06d}..{n - 1:06d}" + "}.tar")
    # pairs.json last: its presence says every tar it names is complete
    for name, record in ((SIZES_NAME, summary.shards), (PAIRS_NAME, asdict(summary))):
        data = json.dumps(record, indent=1, sort_keys=True).encode()
        if remote:
            storage.put_bytes(data, storage.join(out, name))
        else:
            atomic_write_bytes(Path(out) / name, data)
    if remote:
        shutil.rmtree(local, ignore_errors=True)
    return summary


def _remove_export(out: str | Path) -> None:
    """Delete the export in ``out`` (a folder or an ``s3://`` prefix): ``pairs.json`` first, so a
    reader never sees a summary naming tars that are gone, then ``sizes.json`` and the pair tars."""
    names = storage.list_names(out)
    old = [n for n in (PAIRS_NAME, SIZES_NAME) if n in names] + sorted(n for n in names if fnmatch.fnmatchcase(n, PAIR_GLOB))
    if storage.is_remote(out):
        storage.delete([storage.join(out, n) for n in old])
    else:
        for name in old:
            (Path(out) / name).unlink()


def load_export(out: str | Path) -> PairExport:
    """The ``pairs.json`` summary of an export directory or ``s3://`` prefix."""
    path = storage.join(out, PAIRS_NAME)
    try:
        return PairExport(**json.loads(storage.read_bytes(path)))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path!r} does not exist; expected a directory or s3:// prefix written by c2p.data.pairs") from None


def main(argv: Sequence[str] | None = None) -> PairExport:
    p = argparse.ArgumentParser(prog="python -m c2p.data.pairs", description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", nargs="+", required=True, help="object shard directories or .tar files (or s3:// prefixes and objects)")
    p.add_argument("--out", required=True, help="output directory (or s3://bucket/prefix) of pair shards")
    p.add_argument("--samples-per-shard", type=int, default=2000)
    p.add_argument("--views", type=int, nargs="*", default=None, help="view indices to export (default: all)")
    p.add_argument("--caption-template", default="a {label}", help="caption of objects without one")
    a = p.parse_args(argv)
    for flag, value in [("--shards", v) for v in a.shards] + [("--out", a.out)]:
        if storage.is_remote(value):  # the address's shape, before any request
            try:
                storage.check_url(value, "object" if flag == "--shards" and value.endswith(".tar") else "prefix")
            except ValueError as e:
                p.error(f"{flag}: {e}")
    try:
        summary = export_pairs(a.shards, a.out, samples_per_shard=a.samples_per_shard, views=a.views,
                               caption_template=a.caption_template)
    except (OSError, ValueError) as e:  # a missing or malformed input, an unreadable bucket: the message says which
        p.exit(2, f"{p.prog}: error: {e}\n")
    print(json.dumps({k: v for k, v in asdict(summary).items() if k != "shards"}))
    return summary


if __name__ == "__main__":
    main()
