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
brace pattern to pass as ``--train-data``, and the sources). Object shards are read with
the loader's reader (:func:`c2p.data.reader.read_shard`); corrupt ones are counted and
skipped, never fatal, and so is an object whose caption members do not decode (``corrupt_samples``).
Objects whose key is absolute or has a ``..`` component are refused (:func:`unsafe_key`,
listed in ``pairs.json``): the output tars never carry such names.

    python -m c2p.data.pairs --shards runs/demo/shards/train --out runs/demo/pairs
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from c2p.data.reader import CorruptSample, decode_member, read_shard
from c2p.fileio import atomic_write_bytes
from c2p.schema import ShardIndex, ShardWriter, SampleMeta
from c2p.sharddir import INDEX_NAME, ShardDir

PAIR_PATTERN = "pairs-{:06d}.tar"
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


def object_shard_paths(sources: Sequence[str | Path]) -> list[Path]:
    """Tar paths of object shards: a directory with ``index.json`` gives its listed shards,
    a ``.tar`` file itself. Raises FileNotFoundError naming a missing source."""
    paths: list[Path] = []
    for src in sources:
        src = Path(src)
        if src.is_dir() and ShardDir(src).index.is_file():
            paths += [Path(p) for p in ShardIndex.load(src).shard_paths(src)]
        elif src.is_file() and src.suffix == ".tar":
            paths.append(src)
        else:
            raise FileNotFoundError(f"object shard source {str(src)!r} is neither a shard directory with "
                                    f"{INDEX_NAME} nor a .tar file")
    return paths


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

    ``sources``: object shard directories (with ``index.json``) or ``.tar`` files;
    ``views``: view indices to export (None: all); ``caption_template``: caption for objects
    that have none, formatted with ``label``. Existing pair shards in ``out`` are replaced.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard {samples_per_shard!r}; expected >= 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("pairs-*.tar"):
        old.unlink()
    summary = PairExport(out=str(out), train_data="", sources=[str(s) for s in sources])
    writer: ShardWriter | None = None

    def next_writer() -> ShardWriter:
        nonlocal writer
        if writer is not None:
            writer.close()
            summary.shards[writer.path.name] = writer.count
        writer = ShardWriter(out / PAIR_PATTERN.format(len(summary.shards)))
        return writer

    try:
        for tar_path in object_shard_paths(sources):
            samples = read_shard(str(tar_path))
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
                    if writer is None or writer.count >= samples_per_shard:
                        next_writer()
                    writer.write({"__key__": f"{sample['__key__']}_v{v}", ext: sample[name], "txt": caption.encode()})
                    summary.num_samples += 1
        if writer is not None and writer.count:
            writer.close()
            summary.shards[writer.path.name] = writer.count
            writer = None
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
    summary.train_data = str(out / (PAIR_PATTERN.format(0) if n == 1 else
                                    "pairs-{" + f"{0:06d}..{n - 1:06d}" + "}.tar"))
    atomic_write_bytes(out / SIZES_NAME, json.dumps(summary.shards, indent=1, sort_keys=True).encode())
    atomic_write_bytes(out / PAIRS_NAME, json.dumps(asdict(summary), indent=1, sort_keys=True).encode())
    return summary


def load_export(out: str | Path) -> PairExport:
    """The ``pairs.json`` summary of an export directory."""
    path = Path(out) / PAIRS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist; expected a directory written by c2p.data.pairs")
    return PairExport(**json.loads(path.read_text()))


def main(argv: Sequence[str] | None = None) -> PairExport:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", nargs="+", required=True, help="object shard directories or .tar files")
    p.add_argument("--out", required=True, help="output directory of pair shards")
    p.add_argument("--samples-per-shard", type=int, default=2000)
    p.add_argument("--views", type=int, nargs="*", default=None, help="view indices to export (default: all)")
    p.add_argument("--caption-template", default="a {label}", help="caption of objects without one")
    a = p.parse_args(argv)
    summary = export_pairs(a.shards, a.out, samples_per_shard=a.samples_per_shard, views=a.views,
                           caption_template=a.caption_template)
    print(json.dumps({k: v for k, v in asdict(summary).items() if k != "shards"}))
    return summary


if __name__ == "__main__":
    main()
