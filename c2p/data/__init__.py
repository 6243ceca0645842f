"""Streaming loader of c2p shards for pre-training (reads what ``shards/`` writes, via ``c2p.schema``).

- :class:`PretrainStream`: batches for one rank, a pure function of (seed, rank, step) so a
  resumed run reads exactly what the uninterrupted one would have (``c2p.data.stream``).
- :func:`epoch_samples`: samples per pass over ``data.shards``, from ``index.json`` (``c2p.data.shardlist``).

Imports neither Ray, moderngl, DeepSpeed nor submitit: a training node needs none of them.
"""

from c2p.data.reader import ReadStats
from c2p.data.sample import BadSample, SampleDecoder
from c2p.data.shardlist import ShardSource, epoch_samples, resolve_shards
from c2p.data.stream import PretrainStream

__all__ = ["PretrainStream", "epoch_samples", "resolve_shards", "ShardSource", "SampleDecoder", "BadSample", "ReadStats"]
