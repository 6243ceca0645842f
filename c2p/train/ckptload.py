"""No code from checkpoint files: every ``torch.load`` of a checkpoint runs with ``weights_only=True``.

DeepSpeed 0.19 reads its tags with ``torch.load(..., weights_only=False)`` in a dozen places
(the engine's checkpoint engine, the ZeRO-3 and universal loaders, ``zero_to_fp32``, the
universal converter), so a ``torch.save``\\d object with a ``__reduce__`` placed in a tag would
run when the tag is loaded. :func:`weights_only_loads` is a scoped context in which
``torch.load`` (the attribute every one of those call sites goes through) is replaced by one
that forces ``weights_only=True`` and allows exactly the DeepSpeed classes in
:data:`DEEPSPEED_SAFE_GLOBALS` beyond tensors, containers and numbers. A file that needs any
other global is refused with :class:`UnsafeCheckpointError` naming the file and the global;
nothing of it is constructed.

    with weights_only_loads():
        engine.load_checkpoint(...)            # or zero_to_fp32, or the universal loader

:func:`consolidated_state_dict` reads a tag's fp32 weights this way (the export's source).
The universal converter runs in its own process: ``python -m c2p.train.ckptload MODULE ARGS...``
runs ``MODULE`` as ``__main__`` inside the same context.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import runpy
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import torch
from deepspeed.runtime.fp16.loss_scaler import LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

__all__ = ["DEEPSPEED_SAFE_GLOBALS", "UnsafeCheckpointError", "weights_only_loads", "safe_load", "consolidated_state_dict"]

# What DeepSpeed 0.19's ZeRO 0-3 tags (fp32 and bf16) hold beyond tensors and plain containers,
# found with torch.serialization.get_unsafe_globals_in_checkpoint on tags of every stage:
# the optimizer states' static loss scaler (a number in an object), the ZeRO stage enum and the
# fragment addresses of the universal-checkpoint parameter mappings. All three are plain data:
# the weights-only unpickler builds them with __new__ + their attribute dict, calling no code.
DEEPSPEED_SAFE_GLOBALS: list[Any] = [LossScaler, ZeroStageEnum, fragment_address]

_lock = threading.Lock()
_depth = 0
_torch_load = torch.load


class UnsafeCheckpointError(ValueError):
    """A checkpoint file that a weights-only load refuses (it would construct objects or call code
    outside :data:`DEEPSPEED_SAFE_GLOBALS`), or that is not a readable torch file."""


def _file_name(f: Any) -> str:
    if isinstance(f, (str, os.PathLike)):
        return os.fspath(f)
    return str(getattr(f, "name", f))


def safe_load(f: Any, *args: Any, **kwargs: Any) -> Any:
    """``torch.load`` with ``weights_only=True`` (whatever the caller asked) and the DeepSpeed
    allow-list; raises :class:`UnsafeCheckpointError` naming the file when it is refused."""
    kwargs["weights_only"] = True
    kwargs.pop("pickle_module", None)  # weights_only brings its own restricted unpickler
    with torch.serialization.safe_globals(DEEPSPEED_SAFE_GLOBALS):
        try:
            return _torch_load(f, *args, **kwargs)
        except pickle.UnpicklingError as e:
            # torch's message is long and suggests allow-listing or weights_only=False, which is what
            # we refuse: keep the offending global's name.
            found = re.search(r"GLOBAL ([\w.]+)", str(e))
            why = f"the global {found.group(1)}" if found else str(e).strip().splitlines()[0]
            raise UnsafeCheckpointError(
                f"{_file_name(f)}: refused to load this checkpoint file: it asks to build or call {why}, outside the "
                "weights-only allow-list; a file written by DeepSpeed/c2p holds only tensors, numbers, containers and "
                "DeepSpeed's loss scaler, ZeRO stage and fragment addresses. Nothing in it was run."
            ) from None


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Within the block every ``torch.load`` in this process is :func:`safe_load`.

    Reentrant; the original ``torch.load`` is back when the outermost block ends. The swap is
    process-wide (DeepSpeed calls ``torch.load`` from its own modules), so loads in other threads
    during the block are weights-only too, which only ever makes them stricter.
    """
    global _depth
    with _lock:
        _depth += 1
        torch.load = safe_load
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                torch.load = _torch_load


def consolidated_state_dict(tag_dir: str | Path) -> dict[str, torch.Tensor]:
    """fp32 state dict of the whole trainable module of a tag: parameter name -> contiguous fp32
    CPU tensor of the parameter's full (unpartitioned) shape, for any ZeRO stage, read weights-only.

    ZeRO 1-3 (and bf16) tags go through DeepSpeed's own ``zero_to_fp32``; a ZeRO-0 fp32 tag
    holds the full module in its model-states file. :mod:`c2p.train.export` turns it into the
    depth-tower file (after verifying the tag against its commit marker).
    """
    tag_dir = Path(tag_dir)
    with weights_only_loads():  # zero_to_fp32 asks torch.load for weights_only=False
        if any(tag_dir.glob("*optim_states.pt")):
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            sd = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
        else:
            files = sorted(tag_dir.glob("mp_rank_*_model_states.pt"))
            if not files:
                raise FileNotFoundError(f"{tag_dir}: no mp_rank_*_model_states.pt; expected a DeepSpeed tag folder")
            sd = torch.load(files[0], map_location="cpu")["module"]
    return {k: v.float().contiguous() for k, v in sd.items()}


def main(argv: list[str] | None = None) -> None:
    """``python -m c2p.train.ckptload MODULE [ARGS...]``: run ``MODULE`` as ``__main__`` with weights-only loads."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        raise SystemExit("usage: python -m c2p.train.ckptload MODULE [ARGS...]")
    sys.argv = argv
    with weights_only_loads():
        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
