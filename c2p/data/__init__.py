"""The read side of the data: c2p shards (written by :mod:`c2p.shards`, format in :mod:`c2p.schema`)
streamed into pre-training batches, and re-exported as image–text pairs.

- :func:`c2p.data.reader.read_samples` / :func:`~c2p.data.reader.read_shard`: the one reader of our
  tars (the loader, previews, the pairs export and retrieval all use it);
- :class:`PretrainStream`: batches for one rank, a pure function of (seed, rank, step) so a
  resumed run reads exactly what the uninterrupted one would have (``c2p.data.stream``).
- :func:`epoch_samples`: samples per pass over ``data.shards``, from ``index.json`` (``c2p.data.shardlist``);
- :mod:`c2p.data.pairs`: image–text pair shards for open_clip's trainer (``c2p-train-clip``).

Imports neither Ray, moderngl, DeepSpeed nor submitit: a training node needs none of them.
"""

from c2p.data.reader import ReadStats
from c2p.data.sample import BadSample, SampleDecoder
from c2p.data.shardlist import ShardSource, epoch_samples, resolve_shards
from c2p.data.stream import PretrainStream

__all__ = ["PretrainStream", "epoch_samples", "resolve_shards", "ShardSource", "SampleDecoder", "BadSample", "ReadStats"]
