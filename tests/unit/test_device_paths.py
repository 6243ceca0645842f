"""What a GPU run decides from its device, run here with the device as a parameter: precision and
backend, pinned batches and non-blocking copies (the ``meta`` device stands in for an
accelerator), and the EGL device of each local rank."""

from __future__ import annotations

import pytest
import torch

from c2p.config.core import ConfigError, build_config
from c2p.config.pretrain import PretrainConfig
from c2p.data.stream import batch_to_device, pin_batches
from c2p.render.egl import local_cuda_ordinal
from c2p.train.engine import resolve_backend, resolve_precision

CPU, GPU = torch.device("cpu"), torch.device("cuda", 1)


def cfg(**train) -> PretrainConfig:
    return build_config(PretrainConfig, {"data": {"shards": ["x"]}, "train": train})


@pytest.mark.parametrize("precision, device, bf16, expected", [
    ("auto", GPU, True, "bf16"),
    ("auto", GPU, False, "fp32"),  # a V100: no bf16 arithmetic
    ("auto", CPU, None, "fp32"),
    ("fp32", GPU, True, "fp32"),
    ("bf16", CPU, None, "bf16"),  # asked for: allowed (slow), as before
])
def test_precision_from_the_device(precision, device, bf16, expected):
    assert resolve_precision(cfg(precision=precision), device, bf16_supported=bf16) == expected


def test_bf16_refused_on_a_gpu_without_it():
    with pytest.raises(ConfigError, match="train.precision.*compute capability"):
        resolve_precision(cfg(precision="bf16"), GPU, bf16_supported=False)


def test_backend_from_the_device():
    assert resolve_backend(cfg(backend="auto"), GPU) == "nccl"
    assert resolve_backend(cfg(backend="auto"), CPU) == "gloo"
    assert resolve_backend(cfg(backend="gloo"), GPU) == "gloo"
    with pytest.raises(ConfigError, match="train.backend.*'nccl'.*NCCL needs a CUDA device"):
        resolve_backend(cfg(backend="nccl"), CPU)


def test_batches_are_pinned_only_for_cuda():
    assert pin_batches(GPU) and pin_batches("cuda")
    assert not pin_batches(CPU) and not pin_batches("meta")


def test_batch_to_device_moves_tensors_and_keeps_the_rest():
    batch = {"points": torch.rand(2, 8, 3), "label": torch.tensor([1, 2]), "key": ["a", "b"]}
    same = batch_to_device(batch, CPU)
    assert same["points"] is batch["points"] and same["key"] is batch["key"]  # nothing copied on the CPU
    moved = batch_to_device(batch, torch.device("meta"))  # the accelerator path, non_blocking
    assert moved["points"].device.type == "meta" and moved["points"].shape == (2, 8, 3)
    assert moved["label"].dtype == torch.long and moved["key"] == ["a", "b"]


@pytest.mark.parametrize("env, count, expected", [
    ({"LOCAL_RANK": "3"}, 8, 3),
    ({"LOCAL_RANK": "3"}, 1, 0),  # one GPU bound per task: every rank sees its own as ordinal 0
    ({"SLURM_LOCALID": "2"}, 4, 2),
    ({"LOCAL_RANK": "1", "SLURM_LOCALID": "0"}, 4, 1),
    ({}, 4, None),  # no local rank: the current device decides
    ({"LOCAL_RANK": "1"}, 0, None),  # no GPUs: EGL's default device
])
def test_egl_device_of_each_local_rank(env, count, expected):
    assert local_cuda_ordinal(env, count) == expected


def test_bad_local_rank_is_named():
    with pytest.raises(ValueError, match="LOCAL_RANK='x'"):
        local_cuda_ordinal({"LOCAL_RANK": "x"}, 2)
