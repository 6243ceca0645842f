"""c2p.train.throughput: model FLOPs against hand counts, the peak, MFU's arithmetic, the datasheet table."""

from __future__ import annotations

import math

import pytest
import torch
from testdata import vit_forward_flops
from torch import nn

from c2p.models.clip import TINY_CONFIGS, create_clip
from c2p.train.throughput import (
    FlopCount,
    Throughput,
    count_flops,
    datasheet_peak_flops,
    format_summary,
    measure_peak_flops,
    model_flops_per_sample,
)


def test_mlp_tower_flops_equal_the_hand_count():
    """A flatten-linear-GELU-linear tower: forward 2(3S²h + hd) per image; backward computes
    both weight gradients and the hidden activation's gradient, not the input image's."""
    s, h, d = 8, 16, 4
    tower = nn.Sequential(nn.Flatten(), nn.Linear(3 * s * s, h), nn.GELU(), nn.Linear(h, d))
    count = model_flops_per_sample(tower, tower, s, views=2)
    fwd = 2 * (3 * s * s * h + h * d)
    assert count == FlopCount(depth_forward=2 * fwd, depth_backward=2 * 2 * (3 * s * s * h + 2 * h * d), image_forward=fwd)
    assert count.total == 2 * fwd + 4 * (3 * s * s * h + 2 * h * d) + fwd
    assert model_flops_per_sample(tower, None, s).image_forward == 0  # imgfeat runs skip the image tower
    assert all(p.grad is None for p in tower.parameters())  # counted on a copy


def test_tiny_clip_tower_flops_equal_the_hand_count():
    """c2p-tiny's ViT (attention included, which FlopCounterMode misses on CPU without our formula),
    also with activation checkpointing on: its recomputation is not model work."""
    v = TINY_CONFIGS["c2p-tiny"]["vision_cfg"]
    hand = vit_forward_flops(v["image_size"], v["patch_size"], v["width"], v["layers"], TINY_CONFIGS["c2p-tiny"]["embed_dim"])
    assert hand == 3_891_712
    visual = create_clip("c2p-tiny").visual
    count = model_flops_per_sample(visual, visual.eval(), v["image_size"])
    assert count.depth_forward == 2 * hand and count.image_forward == hand
    # backward ~ 2x forward: minus the image's own gradient, plus flash attention's recomputed QKᵀ
    assert 1.85 < count.depth_backward / count.depth_forward < 2.0
    visual.set_grad_checkpointing(True)
    assert model_flops_per_sample(visual, None, v["image_size"]) == FlopCount(count.depth_forward, count.depth_backward, 0)


def test_count_flops_of_a_matmul():
    a, b = torch.randn(3, 5), torch.randn(5, 7)
    assert count_flops(lambda: a @ b) == 2 * 3 * 5 * 7


def test_model_flops_refuses_a_bad_size():
    with pytest.raises(ValueError, match="image_size=0"):
        model_flops_per_sample(nn.Identity(), None, 0)


def test_measured_cpu_peak_is_a_positive_rate():
    peak = measure_peak_flops(torch.device("cpu"), torch.float32, size=128, reps=3)
    assert math.isfinite(peak) and peak > 0
    with pytest.raises(ValueError, match="size=0"):
        measure_peak_flops(torch.device("cpu"), torch.float32, size=0)


@pytest.mark.parametrize("name, dtype, tflops", [
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.0),
    ("NVIDIA H100 PCIe", torch.bfloat16, 756.0),
    ("NVIDIA H200", torch.bfloat16, 989.0),
    ("NVIDIA A100-SXM4-80GB", torch.float32, 19.5),
    ("NVIDIA A10G", torch.bfloat16, None),  # not the A10's row
    ("NVIDIA A10", torch.bfloat16, 125.0),
    ("NVIDIA GeForce GTX 1080", torch.bfloat16, None),
    ("NVIDIA H100 80GB HBM3", torch.float16, None),
])
def test_datasheet_peaks(name, dtype, tflops):
    got = datasheet_peak_flops(name, dtype)
    assert got == (tflops * 1e12 if tflops is not None else None)


def test_lap_and_summary_fields_are_consistent():
    """One rank: rates from the same clock, MFU = per-rank rate x FLOPs per sample / peak."""
    flops = FlopCount(10**9, 2 * 10**9, 0)
    tp = Throughput(flops, peak_flops=1e12, samples_per_step=8, world_size=1, device=torch.device("cpu"),
                    peak_datasheet=2e12)
    with tp.waiting():
        sum(range(1000))
    with tp.checkpointing():
        sum(range(1000))
    lap = tp.lap(3)
    assert lap["samples_per_s"] == lap["samples_per_s_rank"] > 0
    assert lap["mfu"] == pytest.approx(lap["samples_per_s_rank"] * 3e9 / 1e12)
    assert lap["mfu_datasheet"] == pytest.approx(lap["mfu"] / 2)
    assert lap["tflops_rank"] == pytest.approx(lap["mfu"])  # peak 1 TFLOP/s
    assert 0 < lap["data_wait_frac"] < 1 and lap["ckpt_stall_s"] > 0
    assert (lap["flops_per_sample"], lap["peak_tflops"]) == (3e9, 1.0)
    after = tp.lap(4)
    assert after["ckpt_stall_s"] == 0 and after["data_wait_frac"] == 0  # a new interval
    s = tp.summary(4)
    assert s["steps"] == 4 and s["ckpt_stall_s"] == lap["ckpt_stall_s"] and s["flops"]["depth_backward"] == 2 * 10**9
    line = format_summary(s)
    assert "samples/s" in line and "MFU" in line and "data wait" in line and "checkpoint stall" in line
    assert "datasheet" in line


def test_throughput_refuses_a_zero_peak():
    with pytest.raises(ValueError, match="peak_flops=0"):
        Throughput(FlopCount(1, 2, 0), 0.0, 8, world_size=1, device=torch.device("cpu"))
