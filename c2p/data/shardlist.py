"""Shard lists: what one entry of ``data.shards`` names, checked before anything is read.

An entry is either a shard directory written by the render job (it holds ``index.json``,
whose ``shards`` table lists the tar files and their sample counts) or a brace pattern of
tar files (``/data/sn/shard-{000000..000127}.tar``), WebDataset style. A pattern's sample
counts come from the ``index.json`` beside the tars when there is one.

Either can be an ``s3://bucket/prefix`` address instead of a local path (:mod:`c2p.storage`):
``index.json`` is read with one GET and the tars' existence checked with one listing of the
prefix, not one request per tar.

Every tar an entry names must exist when the stream is built: a typo in a path fails at
start, naming the path, instead of hours later as a silently skipped shard.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import braceexpand

from c2p import storage
from c2p.config.core import ConfigError
from c2p.schema import INDEX_NAME, ShardIndex


@dataclass(frozen=True)
class ShardSource:
    """One corpus entry of ``data.shards``, resolved.

    ``urls``: sorted tar paths; ``sizes``: samples per tar (None where no index says);
    ``labels``: the corpus label list (empty when unknown).
    """

    spec: str
    corpus: str
    urls: tuple[str, ...]
    sizes: tuple[int | None, ...]
    labels: tuple[str, ...] = ()

    @property
    def num_samples(self) -> int | None:
        """Samples in one pass over the entry, or None when a tar has no recorded count."""
        if any(s is None for s in self.sizes):
            return None
        return sum(s for s in self.sizes if s is not None)


def _load_index(root: Path) -> ShardIndex | None:
    return ShardIndex.load(root) if (root / INDEX_NAME).is_file() else None


def resolve_shards(spec: str) -> ShardSource:
    """Resolve one ``data.shards`` entry; raises FileNotFoundError naming the first missing path.

    A directory must hold ``index.json`` (and every tar it lists); a pattern must expand
    to existing files.
    """
    if storage.is_remote(spec):
        return _resolve_remote(spec)
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        index = ShardIndex.load(path)  # FileNotFoundError naming <dir>/index.json
        if not index.shards:
            raise ValueError(f"shard directory {path}: index.json lists no shards; expected at least one tar")
        urls = index.shard_paths(path)
        sizes = tuple(index.shards[Path(u).name] for u in urls)
        corpus, labels = index.corpus, tuple(index.labels)
    else:
        # Not a directory: a (brace pattern of) tar path(s); a mistyped directory lands here too
        # and fails below, naming the path.
        urls = sorted(braceexpand.braceexpand(str(path)))
        index = _load_index(Path(urls[0]).parent) if Path(urls[0]).parent.is_dir() else None
        sizes = tuple(index.shards.get(Path(u).name) if index else None for u in urls)
        corpus = index.corpus if index else Path(urls[0]).parent.name
        labels = tuple(index.labels) if index else ()
    missing = [u for u in urls if not os.path.isfile(u)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"shard {missing[0]} of data.shards entry {spec!r} does not exist{more}")
    return ShardSource(spec=spec, corpus=corpus, urls=tuple(urls), sizes=sizes, labels=labels)


def _resolve_remote(spec: str) -> ShardSource:
    """:func:`resolve_shards` of an ``s3://`` prefix (holding ``index.json``) or tar pattern."""
    if spec.endswith(".tar") or "{" in spec:
        urls = sorted(braceexpand.braceexpand(spec))
        prefix = urls[0].rsplit("/", 1)[0]
    else:
        prefix, urls = spec.rstrip("/"), []
    present = storage.list_names(prefix)  # one listing; raises StorageError naming the prefix
    index = None
    if INDEX_NAME in present:
        index = ShardIndex.from_json(storage.read_bytes(storage.join(prefix, INDEX_NAME)), storage.join(prefix, INDEX_NAME))
    if not urls:
        if index is None:
            raise FileNotFoundError(f"shard index {storage.join(prefix, INDEX_NAME)} does not exist; expected a prefix written "
                                    "by the render job (c2p-render --out s3://...)")
        if not index.shards:
            raise ValueError(f"shard prefix {prefix}: index.json lists no shards; expected at least one tar")
        urls = [storage.join(prefix, name) for name in sorted(index.shards)]
    names = [u.rsplit("/", 1)[1] for u in urls]
    missing = [u for u, n in zip(urls, names) if n not in present]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"shard {missing[0]} of data.shards entry {spec!r} does not exist{more}")
    sizes = tuple(index.shards.get(n) if index else None for n in names)
    corpus = index.corpus if index else prefix.rsplit("/", 1)[-1]
    return ShardSource(spec=spec, corpus=corpus, urls=tuple(urls), sizes=sizes, labels=tuple(index.labels) if index else ())


def epoch_samples(shards: list[str]) -> int:
    """Samples in one pass over all ``shards`` entries (from their ``index.json`` counts).

    Raises ValueError naming the entry when an entry has no recorded counts (a bare pattern
    without an index beside it): set ``train.epoch_samples`` explicitly then.
    """
    total = 0
    for spec in shards:
        source = resolve_shards(spec)
        if source.num_samples is None:
            raise ValueError(
                f"data.shards entry {spec!r}: no {INDEX_NAME} with sample counts for its tars; "
                "expected a shard directory (or set train.epoch_samples)"
            )
        total += source.num_samples
    return total


def check_finite_passes(sources: list[ShardSource], *, world_size: int, workers: int) -> None:
    """Finite passes (``data.resampled=false``) split each corpus's tars over world_size x
    max(1, workers) reader lanes, each with at least one: raises ConfigError otherwise."""
    lanes = world_size * max(1, workers)
    for source in sources:
        if len(source.urls) < lanes:
            raise ConfigError(
                "data.resampled", False,
                f"True, or at least world_size x workers = {world_size} x {max(1, workers)} = {lanes} shards per corpus "
                f"for finite passes ({source.spec!r} has {len(source.urls)})",
            )
