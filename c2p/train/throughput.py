"""How well a run uses its hardware: model FLOPs, a measured peak, MFU, data wait, checkpoint stall.

Three numbers make MFU (model FLOPs utilisation, PaLM's definition):

- **model FLOPs per sample** (:func:`model_flops_per_sample`), counted once from the model by
  running it: a forward and a backward of the trainable depth tower on the two depth views of
  one object, plus, unless the shards carry precomputed ``imgfeat``, one forward of the frozen
  image tower on its RGB view. Counting is ``torch.utils.flop_counter.FlopCounterMode`` on a
  real forward/backward of batch size 1 (ViT FLOPs are linear in the batch): it counts the
  matrix products (linear layers, the patch convolution, attention's QKᵀ and AV, 2 FLOPs per
  multiply-add; attention's backward as the fused kernels do it, QKᵀ recomputed). Elementwise
  work (norms, GELU, softmax), the depth rendering, the NT-Xent loss (O(B²·D), batch-dependent
  and < 0.1% at B=256) and the optimizer are not model FLOPs. For ViT-B/32 at 224²: 8.8 GFLOP
  per image forward, 52.5 GFLOP per sample with ``imgfeat``, 58.4 without.
  Activation checkpointing's recomputation is not counted either (it is overhead, not model
  work): the count runs on a copy with checkpointing off;
- **the peak** (:func:`measure_peak_flops`): a large square matmul in the run's precision on
  the run's own device, a short fixed number of repetitions, the median; measured once at the
  start. On GPUs the datasheet's dense peak (:func:`datasheet_peak_flops`) is reported beside it;
- **achieved FLOP/s per rank**: samples/s per rank × FLOPs per sample.

:class:`Throughput` is the run's clock: it times the interval between metric lines, the part
of it spent waiting for the data stream (``waiting()``) and in checkpoint saves
(``checkpointing()``), reduces them over ranks and turns them into the metric fields; its
:meth:`~Throughput.summary` is the end-of-run line.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import nn

log = logging.getLogger("c2p.train")

__all__ = ["FlopCount", "count_flops", "model_flops_per_sample", "measure_peak_flops", "datasheet_peak_flops",
           "Throughput", "build_throughput", "format_summary"]


# ----------------------------------------------------------------------------- counting


def _cpu_flash_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """PyTorch's CPU scaled-dot-product attention kernel, which FlopCounterMode does not know:
    the same count as its CUDA flash kernel (QKᵀ and AV, 2 FLOPs per multiply-add). Shapes [B,H,L,E]."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _cpu_flash_attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out, query, key, value)


def _flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    custom = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_flash_attention_flops
        custom[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_flash_attention_backward_flops
    return FlopCounterMode(display=False, custom_mapping=custom)


def count_flops(fn: Callable[[], Any]) -> int:
    """Matrix-product FLOPs (2 per multiply-add) of the ops ``fn()`` runs, counted by FlopCounterMode."""
    with _flop_counter() as counter:
        fn()
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class FlopCount:
    """Model FLOPs of one training sample (one object), by part; see the module docstring."""

    depth_forward: int
    """depth tower forward on the object's depth views"""
    depth_backward: int
    """depth tower backward (gradients of activations and weights) on them"""
    image_forward: int
    """frozen image tower forward on one RGB view; 0 when precomputed ``imgfeat`` are read"""

    @property
    def total(self) -> int:
        return self.depth_forward + self.depth_backward + self.image_forward


def _without_grad_checkpointing(tower: nn.Module) -> nn.Module:
    """A copy of ``tower`` on the CPU whose open_clip blocks do not recompute in the backward."""
    tower = copy.deepcopy(tower).to("cpu", torch.float32)
    for m in tower.modules():
        if getattr(m, "grad_checkpointing", False):
            m.grad_checkpointing = False
    return tower


def model_flops_per_sample(depth_tower: nn.Module, image_tower: nn.Module | None, image_size: int, *,
                           views: int = 2) -> FlopCount:
    """Model FLOPs of one CLIP2Point sample, counted on CPU copies at batch size 1.

    depth_tower: the trainable tower (``images [N,3,S,S] -> [N,D]``), run forward and backward on
    ``views`` depth images of side ``image_size`` px (CLIP2Point: 2, the augmented pair).
    image_tower: the frozen tower, run forward on one image; None when the run reads ``imgfeat``.
    The towers themselves are not touched (no gradients land in them).
    """
    if image_size < 1 or views < 1:
        raise ValueError(f"model_flops_per_sample: image_size={image_size}, views={views}; expected >= 1")
    tower = _without_grad_checkpointing(depth_tower).train()
    gen = torch.Generator().manual_seed(0)  # not the global generator: the run's randomness stays as it was
    x = torch.randn(views, 3, image_size, image_size, generator=gen)
    holder: dict[str, torch.Tensor] = {}

    def forward() -> None:
        holder["out"] = tower(x)

    fwd = count_flops(forward)
    bwd = count_flops(lambda: holder["out"].float().square().mean().backward())
    img = 0
    if image_tower is not None:
        # train mode under no_grad: in eval mode nn.MultiheadAttention takes its fused fast path,
        # whose projections and attention FlopCounterMode cannot see (the work is the same).
        frozen = _without_grad_checkpointing(image_tower).train()
        with torch.no_grad():
            img = count_flops(lambda: frozen(torch.randn(1, 3, image_size, image_size, generator=gen)))
    return FlopCount(fwd, bwd, img)


# ----------------------------------------------------------------------------- peaks


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak_flops(device: torch.device, dtype: torch.dtype, *, size: int | None = None,
                       reps: int | None = None, inner: int | None = None) -> float:
    """FLOP/s of a ``size``×``size`` matmul in ``dtype`` on ``device``: median of ``reps`` timings
    of ``inner`` back-to-back products (after one warm-up). Defaults: 8192, 10 × 10 on CUDA
    (~0.1 s on an H100 in bf16); 1024, 5 × 1 elsewhere (~0.3 s on one CPU core in fp32)."""
    gpu = device.type == "cuda"
    size = (8192 if gpu else 1024) if size is None else size
    reps = (10 if gpu else 5) if reps is None else reps
    inner = (10 if gpu else 1) if inner is None else inner
    if size < 1 or reps < 1 or inner < 1:
        raise ValueError(f"measure_peak_flops: size={size}, reps={reps}, inner={inner}; expected >= 1")
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device, dtype)
    b = torch.randn(size, size, generator=gen).to(device, dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    times = []
    for i in range(reps + 1):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            torch.matmul(a, b, out=out)
        _sync(device)
        if i:  # the first round warms up kernels, threads and caches
            times.append((time.perf_counter() - t0) / inner)
    return 2.0 * size**3 / statistics.median(times)


# Dense (no sparsity) tensor-core peaks from NVIDIA's datasheets, TFLOP/s: bf16 and fp32 (plain fp32,
# which is what an fp32 run gets: PyTorch leaves TF32 matmuls off by default). The first name that is
# a substring of torch.cuda.get_device_name() wins, so the more specific names come first.
_DATASHEET_TFLOPS: tuple[tuple[str, float, float], ...] = (
    ("H200", 989.0, 67.0),
    ("H100 PCIe", 756.0, 51.0),
    ("H100 NVL", 835.0, 60.0),
    ("H100", 989.0, 67.0),  # SXM
    ("A100", 312.0, 19.5),
    ("L40S", 362.0, 91.6),
    ("L4", 121.0, 30.3),
    ("A10G", float("nan"), float("nan")),  # AWS's variant of the A10: no published peak, so none (not the A10's)
    ("A10", 125.0, 31.2),
    ("RTX 4090", 165.2, 82.6),
)


def datasheet_peak_flops(device_name: str, dtype: torch.dtype) -> float | None:
    """The datasheet's dense peak FLOP/s of the GPU called ``device_name`` (as
    ``torch.cuda.get_device_name``) in ``dtype`` (bf16 or fp32); None for an unknown card or dtype."""
    column = {torch.bfloat16: 1, torch.float32: 2}.get(dtype)
    if column is None:
        return None
    for row in _DATASHEET_TFLOPS:
        if row[0] in device_name:
            return float(row[column]) * 1e12 if math.isfinite(row[column]) else None
    return None


# ----------------------------------------------------------------------------- the run's clock


def format_summary(s: dict[str, Any]) -> str:
    """One line of a :meth:`Throughput.summary` dict for the log."""
    sheet = f", {100 * s['mfu_datasheet']:.1f}% of the datasheet peak" if s.get("mfu_datasheet") is not None else ""
    return (f"throughput: {s['samples_per_s']:.1f} samples/s ({s['samples_per_s_rank']:.1f} per rank), "
            f"MFU {100 * s['mfu']:.2f}% of {s['peak_tflops']:.3g} TFLOP/s measured{sheet} "
            f"({s['flops_per_sample'] / 1e9:.3g} GFLOP/sample), data wait {100 * s['data_wait_frac']:.1f}%, "
            f"checkpoint stall {s['ckpt_stall_s']:.2f} s over {s['steps']} steps")


class Throughput:
    """Per-interval and whole-run throughput of one rank, reduced over ranks when reported.

    flops: model FLOPs per sample; peak_flops: this rank's measured peak FLOP/s;
    peak_datasheet: the card's datasheet peak (None on CPUs and unknown cards);
    samples_per_step: global batch (objects per optimizer step, all ranks).
    :meth:`lap` and :meth:`summary` are collectives: every rank calls them at the same steps.
    """

    def __init__(self, flops: FlopCount, peak_flops: float, samples_per_step: int, *, world_size: int,
                 device: torch.device, step: int = 0, peak_datasheet: float | None = None):
        if peak_flops <= 0 or samples_per_step < 1:
            raise ValueError(f"Throughput: peak_flops={peak_flops}, samples_per_step={samples_per_step}; expected > 0")
        self.flops, self.peak_flops, self.peak_datasheet = flops, peak_flops, peak_datasheet
        self.samples_per_step, self.world_size, self.device = samples_per_step, world_size, device
        self.start(step)

    def start(self, step: int) -> None:
        """(Re)start both clocks at ``step`` (the loop's first step)."""
        now = time.perf_counter()
        self._lap = {"t": now, "step": step, "wait": 0.0, "stall": 0.0}
        self._run = {"t": now, "step": step, "wait": 0.0, "stall": 0.0}

    @contextlib.contextmanager
    def _timing(self, key: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            self._lap[key] += dt
            self._run[key] += dt

    def waiting(self):
        """Context: time spent waiting for the next batch of the data stream."""
        return self._timing("wait")

    def checkpointing(self):
        """Context: time the checkpoint manager held training up (a save, or deciding not to)."""
        return self._timing("stall")

    def _reduce(self, clock: dict, step: int) -> dict[str, Any]:
        """Metric fields of ``clock`` up to ``step``, averaged over ranks. A collective."""
        import torch.distributed as dist

        elapsed = time.perf_counter() - clock["t"]
        t = torch.tensor([elapsed, clock["wait"], clock["stall"], self.peak_flops], dtype=torch.float64, device=self.device)
        if dist.is_initialized() and self.world_size > 1:
            dist.all_reduce(t)
            t /= self.world_size
        elapsed, wait, stall, peak = t.tolist()
        samples_per_s = (step - clock["step"]) * self.samples_per_step / max(elapsed, 1e-9)
        per_rank = samples_per_s / self.world_size
        achieved = per_rank * self.flops.total
        return {
            "samples_per_s": samples_per_s, "samples_per_s_rank": per_rank,
            "data_wait_frac": wait / max(elapsed, 1e-9), "ckpt_stall_s": stall,
            "tflops_rank": achieved / 1e12, "mfu": achieved / peak,
            **({"mfu_datasheet": achieved / self.peak_datasheet} if self.peak_datasheet else {}),
            "flops_per_sample": float(self.flops.total), "peak_tflops": peak / 1e12,
        }

    def lap(self, step: int) -> dict[str, Any]:
        """The metric fields of the interval since the previous lap (or start), then a new interval. A collective.

        ``samples_per_s`` (all ranks), ``samples_per_s_rank``, ``data_wait_frac`` (of the wall
        time, mean over ranks), ``ckpt_stall_s`` (seconds in checkpoint saves), ``tflops_rank``
        (achieved model TFLOP/s per rank), ``mfu`` (of the measured peak), ``mfu_datasheet`` (of
        the card's datasheet peak, GPUs the table knows), ``flops_per_sample``, ``peak_tflops``.
        """
        out = self._reduce(self._lap, step)
        self._lap = {"t": time.perf_counter(), "step": step, "wait": 0.0, "stall": 0.0}
        return out

    def summary(self, step: int) -> dict[str, Any]:
        """The fields of :meth:`lap` over the whole run so far (this process's part of it), plus
        ``steps`` and the FLOP count by part. A collective."""
        return {**self._reduce(self._run, step), "steps": step - self._run["step"], "flops": asdict(self.flops)}


def build_throughput(flops: FlopCount, *, device: torch.device, dtype: torch.dtype, samples_per_step: int,
                     world_size: int, step: int = 0, peak_tflops: float = 0.0) -> Throughput:
    """A run's :class:`Throughput` for ``flops`` per sample (:func:`model_flops_per_sample`): this
    rank's peak measured on ``device`` in ``dtype`` (or ``peak_tflops`` when > 0: a known peak, no
    measurement), beside it the datasheet peak on GPUs the table knows."""
    peak = peak_tflops * 1e12 if peak_tflops > 0 else measure_peak_flops(device, dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    sheet = datasheet_peak_flops(name, dtype) if device.type == "cuda" else None
    log.info("model FLOPs per sample %.4g G (depth fwd %.4g + bwd %.4g, image fwd %.4g); peak %s %.4g TFLOP/s%s "
             "on %s (%s)", flops.total / 1e9, flops.depth_forward / 1e9, flops.depth_backward / 1e9,
             flops.image_forward / 1e9, "given" if peak_tflops > 0 else "measured", peak / 1e12,
             f", datasheet {sheet / 1e12:.4g}" if sheet else "", name, str(dtype).removeprefix("torch."))
    return Throughput(flops, peak, samples_per_step, world_size=world_size, device=device, step=step,
                      peak_datasheet=sheet)
