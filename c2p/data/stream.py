"""The pre-training stream: WebDataset shards → batches, a pure function of (seed, rank, step).

Why the stream is cut into segments. A streaming shuffle buffer and a half-read shard
cannot be checkpointed, so exact resume cannot come from saving the reader's state.
Instead the stream is rebuilt from scratch every ``reseed_every`` steps (set it to the
checkpoint interval), in uninterrupted runs too: the batches of segment ``k`` (steps
``k·R .. (k+1)·R-1``) depend only on ``(seed, rank, k)``. A run resumed at a checkpoint
step therefore sees exactly the batches the uninterrupted run saw. A resume at any other
step replays the segment up to that step and discards it (exact, costs up to R-1 batches).
The price of a rebuild: each lane refills its shuffle buffer (reads up to
``shuffle_buffer`` samples ahead) once per segment, <1% at the defaults (1000 samples per
500 steps of 256).

Lanes. DataLoader workers hand out batches round-robin, so with ``W`` workers the batch of
step ``s`` is made by worker ``(s - start) % W``. Within a segment, a step's *lane* is
``(s - k·R) % W``; every lane is its own reader (shard sampler, mixer, shuffle buffer,
per-sample generator, all seeded from ``(seed, rank, k, lane)``) and produces the batches
of its steps in order. Each worker works out which lane its next step falls in, so the
round-robin order and the lanes agree whatever the start step. The stream depends on
``workers`` (= lanes) and ``batch_size``: change them and a resume is no longer exact.

Shard choice. ``data.resampled`` (long runs, open_clip's default): each lane draws shards
with replacement (WebDataset's ``ResampledShards``, seeded per lane and segment), so a
restarted run neither replays nor skips shards systematically. Otherwise finite passes:
per corpus, epoch ``e`` shuffles the shard list with ``(seed, e)`` (the same on all ranks),
splits it by rank and then by lane (as ``split_by_node``/``split_by_worker`` do, but by our
rank and lane instead of the environment's), and passes repeat; the whole run is one
segment, so a resume replays from step 0 (exact, slow for late steps).

Corpora. Each entry of ``data.shards`` is one corpus; per sample, a lane picks the corpus
with probability ``weights[i] / sum(weights)``; the shuffle buffer then mixes them.

Counting. Corrupt shards and skipped samples are counted per worker and the counts since
the previous batch travel inside each batch to the main process, which adds them up in
:meth:`PretrainStream.stats` (and its state dict, so they survive a restart). A replay
after an off-boundary resume counts what it re-reads again.
"""

from __future__ import annotations

import logging
import random
import sys
from itertools import count
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from c2p import storage
from c2p.config.core import ConfigError
from c2p.config.pretrain import DataConfig
from c2p.data.reader import COUNTERS, ReadStats, read_samples
from c2p.data.sample import BadSample, SampleDecoder, collate
from c2p.data.shardlist import ShardSource, check_finite_passes, resolve_shards
from c2p.storage.shardcache import ShardCache

log = logging.getLogger(__name__)

# Purposes of derived seeds: one independent generator each.
_SHARDS, _MIX, _SHUFFLE, _DECODE = range(4)
# A source that keeps producing only unusable samples is a broken corpus, not bad luck.
_MAX_BAD_IN_A_ROW = 10_000


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes and Python versions (unlike ``hash``)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts] + [len(parts)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class _LaneBatches(IterableDataset):
    """Batches of one rank, made in a DataLoader worker (or the main process when ``workers=0``).

    Picklable: workers get a copy; every generator is built inside ``__iter__``.
    """

    def __init__(
        self,
        sources: Sequence[ShardSource],
        weights: Sequence[float],
        decoder: SampleDecoder,
        *,
        seed: int,
        rank: int,
        world_size: int,
        batch_size: int,
        lanes: int,
        start_step: int,
        reseed_every: int | None,
        resampled: bool,
        shuffle_buffer: int,
        cache: ShardCache | None = None,
    ):
        self.sources, self.weights, self.decoder, self.cache = list(sources), list(weights), decoder, cache
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.batch_size, self.lanes, self.start_step = batch_size, lanes, start_step
        self.reseed_every, self.resampled, self.shuffle_buffer = reseed_every, resampled, shuffle_buffer

    # --------------------------------------------------------------- which batches this worker makes

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None:
            torch.set_num_threads(1)  # decoding is per-sample numpy/PIL work: threads only contend
        stats = ReadStats()
        step = self.start_step + worker  # round-robin: this worker serves start + worker + j·W
        while True:
            segment = step // self.reseed_every if self.reseed_every else 0
            first = segment * self.reseed_every if self.reseed_every else 0
            end = first + self.reseed_every if self.reseed_every else sys.maxsize
            lane = (step - first) % self.lanes
            for lane_step, batch in zip(range(first + lane, end, self.lanes), self._lane(segment, lane, stats)):
                if lane_step < step:
                    continue  # resume inside a segment: replay up to the start step
                batch["step"] = lane_step
                batch["stats"] = stats.take_delta()
                yield batch
                step += self.lanes
            # the next step of this worker lies in the next segment: rebuild the lane there

    # --------------------------------------------------------------- one lane of one segment

    def _lane(self, segment: int, lane: int, stats: ReadStats) -> Iterator[dict[str, Any]]:
        """Endless batches of lane ``lane`` of segment ``segment``: all randomness seeded by them."""
        ids = (self.seed, self.rank, segment, lane)
        shard_urls = [self._urls(i, ids) for i in range(len(self.sources))]
        streams = [read_samples(urls, stats, select=self.decoder.keep_member, cache=self.cache) for urls in shard_urls]
        samples = self._mix(streams, random.Random(derive_seed(*ids, _MIX)))
        if self.shuffle_buffer > 0:
            rng = random.Random(derive_seed(*ids, _SHUFFLE))
            samples = _shuffle(samples, self.shuffle_buffer, rng)
        decode_rng = np.random.default_rng(derive_seed(*ids, _DECODE))
        examples: list[dict[str, Any]] = []
        bad_in_a_row = 0
        for raw in samples:
            try:
                examples.append(self.decoder(raw, decode_rng))
            except BadSample as exn:
                stats.skip(raw.get("__key__", "?"), f"{exn} (in {raw.get('__url__')})")
                bad_in_a_row += 1
                if bad_in_a_row >= _MAX_BAD_IN_A_ROW:
                    raise RuntimeError(f"{bad_in_a_row} unusable samples in a row; last: {stats.last_error}") from exn
                continue
            bad_in_a_row = 0
            stats.samples += 1
            if len(examples) == self.batch_size:
                yield collate(examples)
                examples = []

    def _urls(self, index: int, ids: tuple[int, ...]) -> Iterator[str]:
        """Endless tar paths of source ``index`` for one lane: resampled, or split finite passes."""
        urls = list(self.sources[index].urls)
        if self.resampled:
            sampler = wds.ResampledShards(
                urls, seed=derive_seed(*ids, _SHARDS, index), worker_seed=lambda: 0, deterministic=True
            )
            for item in sampler:
                yield item["url"]
            return
        _, rank, _, lane = ids
        for epoch in count():
            order = urls.copy()
            random.Random(derive_seed(self.seed, _SHARDS, index, epoch)).shuffle(order)  # same on every rank
            yield from order[rank :: self.world_size][lane :: self.lanes]

    def _mix(self, streams: list[Iterator[dict]], rng: random.Random) -> Iterator[dict]:
        if len(streams) == 1:
            yield from streams[0]
            return
        choices = range(len(streams))
        while True:
            (i,) = rng.choices(choices, weights=self.weights)
            yield next(streams[i])  # sources are endless


def _shuffle(samples: Iterator[dict], bufsize: int, rng: random.Random) -> Iterator[dict]:
    """WebDataset's streaming shuffle buffer with our generator (starts yielding at 100 samples)."""
    return wds.shuffle(bufsize, initial=min(100, bufsize), rng=rng)(samples)


def pin_batches(device: torch.device) -> bool:
    """Whether batches bound for ``device`` should wait in page-locked host memory: on CUDA only,
    where a copy from pinned memory runs asynchronously (``non_blocking``) beside the compute,
    while from pageable memory it blocks the host. Pinning costs host memory and a copy, so not
    for CPU runs (and pinning needs a CUDA driver)."""
    return torch.device(device).type == "cuda"


def batch_to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """``batch`` with its tensors on ``device``; other entries (keys) as they are.

    Copies to an accelerator are ``non_blocking``: from the pinned batches of a CUDA stream
    (:func:`pin_batches`) they overlap with the compute already queued, and CUDA orders them
    before any kernel that reads them on the same stream. On the CPU nothing is copied.
    """
    device = torch.device(device)
    non_blocking = device.type != "cpu"
    return {k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class PretrainStream:
    """Batches of pre-training examples for one rank, resumable exactly.

        stream = PretrainStream(cfg.data, rank=r, world_size=n, seed=cfg.run.seed,
                                batch_size=cfg.train.batch_size // n, reseed_every=cfg.checkpoint.every)
        stream.load_state_dict(client_state["data"])   # on resume
        for batch in stream: ...                        # endless; stop at train.steps
        client_state["data"] = stream.state_dict()

    Each batch: ``points [B,P,3] float32`` (unit sphere, ``P = cfg.points``), ``view [B,3]
    float32`` (elevation°, azimuth°, distance of the chosen RGB view), ``image [B,3,H,W]
    float32`` CLIP-normalised at ``cfg.image_size`` or, with ``cfg.imgfeat_tag``, ``imgfeat
    [B,D] float32`` (and no image), ``label [B] long`` (label index within its corpus),
    ``key list[str]``. The batch of step ``s`` is a function of (seed, rank, s, batch_size,
    workers, reseed_every) only; see the module docstring.

    ``device``: where the batches go. On a CUDA device the DataLoader hands out batches in
    page-locked (pinned) memory, so that :func:`batch_to_device` copies them asynchronously.

    Raises FileNotFoundError naming the path when a shard directory, its index or a tar is
    missing, ConfigError for settings it cannot honour.
    """

    def __init__(
        self,
        cfg: DataConfig,
        *,
        rank: int,
        world_size: int,
        seed: int,
        batch_size: int,
        start_step: int = 0,
        views_per_object: int = 10,
        reseed_every: int = 500,
        device: torch.device | str = "cpu",
    ):
        cfg.validate()
        if not cfg.shards:
            raise ConfigError("data.shards", cfg.shards, "at least one shard directory or pattern")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} with world_size {world_size}; expected 0 <= rank < world_size")
        for name, value in (("batch_size", batch_size), ("reseed_every", reseed_every), ("views_per_object", views_per_object)):
            if value < 1:
                raise ValueError(f"PretrainStream {name}={value}; expected >= 1")
        weights = list(cfg.weights) or [1.0] * len(cfg.shards)
        if sum(weights) <= 0:
            raise ConfigError("data.weights", cfg.weights, "at least one positive weight")
        self.cfg, self.rank, self.world_size, self.seed = cfg, rank, world_size, seed
        self.batch_size, self.reseed_every, self.step = batch_size, reseed_every, start_step
        self.device = torch.device(device)
        self.sources = [resolve_shards(spec) for spec in cfg.shards]  # FileNotFoundError names the path
        self.weights = weights
        self.lanes = max(1, cfg.workers)
        if not cfg.resampled:
            check_finite_passes(self.sources, world_size=world_size, workers=cfg.workers)
        self.decoder = SampleDecoder(
            points=cfg.points, image_size=cfg.image_size, imgfeat_tag=cfg.imgfeat_tag, views_per_object=views_per_object
        )
        self._totals: dict[str, Any] = {name: 0 for name in COUNTERS}
        self._totals["last_error"] = ""

    @property
    def epoch_samples(self) -> int | None:
        """Samples in one pass over all corpora (index.json counts), None if a pattern has none."""
        sizes = [s.num_samples for s in self.sources]
        return None if any(n is None for n in sizes) else sum(n for n in sizes if n is not None)

    def _dataset(self) -> _LaneBatches:
        return _LaneBatches(
            self.sources,
            self.weights,
            self.decoder,
            seed=self.seed,
            rank=self.rank,
            world_size=self.world_size,
            batch_size=self.batch_size,
            lanes=self.lanes,
            start_step=self.step,
            reseed_every=self.reseed_every if self.cfg.resampled else None,
            resampled=self.cfg.resampled,
            shuffle_buffer=self.cfg.shuffle_buffer,
            cache=ShardCache(self.cfg.cache_dir, int(self.cfg.cache_max_gb * 2**30), on_retry=storage.count_retry)
            if self.cfg.cache_dir else None,
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Endless batches from the current step on; ``self.step`` counts the batches handed out."""
        dataset = self._dataset()
        if self.cfg.workers == 0:
            batches: Any = iter(dataset)
        else:
            batches = DataLoader(
                dataset,
                batch_size=None,  # the dataset batches: a batch is one lane's, made in one worker
                num_workers=self.cfg.workers,
                prefetch_factor=2,
                pin_memory=pin_batches(self.device),
            )
        for batch in batches:
            made_for = batch.pop("step")
            if made_for != self.step:  # lanes and round-robin disagree: a bug, never silently mix
                raise RuntimeError(f"data stream produced the batch of step {made_for} at step {self.step}")
            self._add(batch.pop("stats"))
            self.step += 1
            yield batch

    def _add(self, delta: dict[str, Any]) -> None:
        for name in COUNTERS:
            self._totals[name] += int(delta[name])
        if delta.get("last_error"):
            self._totals["last_error"] = delta["last_error"]

    def stats(self) -> dict[str, Any]:
        """Counts so far (this run and the runs it resumed): ``corrupt_shards``, ``skipped_samples``,
        ``samples``, ``samples_read``, ``shards_opened``, ``last_error``, ``step``.

        Counts arrive with batches, so they cover what the workers read up to the last batch
        handed out (plus what they read ahead for it).
        """
        return {**self._totals, "step": self.step}

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must keep: the step of the next batch, the seed and stream layout, the counts."""
        return {
            "step": self.step,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "workers": self.cfg.workers,
            "reseed_every": self.reseed_every,
            "resampled": self.cfg.resampled,
            "stats": {k: v for k, v in self._totals.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state["step"]`` with the saved seed; call before iterating.

        A different layout (world size, batch size, workers, reseed_every, resampled) is
        accepted and logged: the run goes on, but the stream is no longer the one the
        uninterrupted run would have read.
        """
        if "step" not in state or int(state["step"]) < 0:
            raise ValueError(f"data stream state {state!r}: expected a 'step' >= 0")
        self.step = int(state["step"])
        if "seed" in state:
            self.seed = int(state["seed"])
        mine = self.state_dict()
        changed = {k: (state[k], mine[k]) for k in ("world_size", "batch_size", "workers", "reseed_every", "resampled") if k in state and state[k] != mine[k]}
        if changed:
            log.warning("data stream layout changed since the checkpoint (saved, now): %s; resume is not exact", changed)
        for name in COUNTERS:
            self._totals[name] = int(state.get("stats", {}).get(name, 0))
        self._totals["last_error"] = state.get("stats", {}).get("last_error", "")
