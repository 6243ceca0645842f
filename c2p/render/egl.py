"""Headless OpenGL through EGL: which EGL device renders for this process, and its context.

EGL's default device is Mesa's llvmpipe on CPU machines; on GPU nodes EGL lists every GPU,
whatever CUDA_VISIBLE_DEVICES says, so a process renders on its own GPU only if the EGL index
is chosen from its CUDA ordinal (:func:`select_egl_device`). Which CUDA ordinal is this
process's: the one it is told, else its local rank's (:func:`local_cuda_ordinal`: one process
per GPU, as torchrun, ``srun`` and submitit start them), else the current CUDA device.
:func:`create_context` opens the OpenGL 3.3 context the mesh renderer draws with.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any, Mapping, Optional

from c2p.render import RenderError

__all__ = ["create_context", "select_egl_device", "local_cuda_ordinal"]

#: Where launchers put a process's rank on its node (torchrun, our cluster layer; SLURM's own name last).
_LOCAL_RANK_VARS = ("LOCAL_RANK", "SLURM_LOCALID")


def _load_torch_compiler_first() -> None:
    """Import ``torch._dynamo`` (and the LLVM its compiler stack brings) before Mesa's is loaded.

    In the other order a process segfaults as soon as it imports torch._dynamo after rendering, and
    torchvision and open_clip import it: a process that renders and then builds a CLIP model (a
    notebook that renders and evaluates, say) would crash; loaded first, both coexist.
    About 1 s, once per process, and nothing when torchvision was already imported.
    """
    try:
        import torch._dynamo  # noqa: F401
    except ImportError:  # no torch compiler stack here: nothing to collide with
        pass


def _egl_devices_cuda_ordinals() -> list[Optional[int]]:
    """For each EGL device (eglQueryDevicesEXT order, glcontext's device_index), its CUDA ordinal or None."""
    name = ctypes.util.find_library("EGL") or "libEGL.so.1"
    lib = ctypes.CDLL(name)
    lib.eglGetProcAddress.restype = ctypes.c_void_p
    lib.eglGetProcAddress.argtypes = [ctypes.c_char_p]
    p_query = lib.eglGetProcAddress(b"eglQueryDevicesEXT")
    p_attr = lib.eglGetProcAddress(b"eglQueryDeviceAttribEXT")
    if not p_query:
        return []
    query = ctypes.CFUNCTYPE(ctypes.c_uint, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int))(p_query)
    count = ctypes.c_int(0)
    if not query(0, None, ctypes.byref(count)) or count.value <= 0:
        return []
    devices = (ctypes.c_void_p * count.value)()
    query(count.value, devices, ctypes.byref(count))
    out: list[Optional[int]] = [None] * count.value
    if p_attr:
        attr = ctypes.CFUNCTYPE(ctypes.c_uint, ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_ssize_t))(p_attr)
        egl_cuda_device_nv = 0x323A  # EGL_NV_device_cuda
        for i in range(count.value):
            value = ctypes.c_ssize_t(-1)
            if attr(devices[i], egl_cuda_device_nv, ctypes.byref(value)):
                out[i] = int(value.value)
    return out


def local_cuda_ordinal(environ: Mapping[str, str], device_count: int) -> Optional[int]:
    """The CUDA ordinal of this process's GPU when one process runs per GPU: local rank modulo
    ``device_count`` (the GPUs this process sees: with one GPU bound per task, as ``srun
    --gpu-bind`` does, every rank sees its own GPU as ordinal 0). None without GPUs or without a
    local rank in ``environ`` (``LOCAL_RANK``, else ``SLURM_LOCALID``).

    Raises ValueError naming the variable when it is not a non-negative integer.
    """
    if device_count < 1:
        return None
    for name in _LOCAL_RANK_VARS:
        value = environ.get(name, "").strip()
        if value:
            if not value.isdigit():
                raise ValueError(f"{name}={value!r}: expected a local rank, an integer >= 0")
            return int(value) % device_count
    return None


def select_egl_device(device_index: Optional[int] = None) -> Optional[int]:
    """The EGL device index (glcontext's ``device_index``) for CUDA device ``device_index`` of this process.

    device_index: CUDA ordinal as this process sees it (i.e. after CUDA_VISIBLE_DEVICES); None: the
    local rank's GPU (:func:`local_cuda_ordinal`), or the current CUDA device when no local rank is
    set; on machines without CUDA None (EGL's default device: llvmpipe on CPU machines). EGL lists every GPU whatever CUDA_VISIBLE_DEVICES says, so the ordinal is matched
    through the NVIDIA EGL_CUDA_DEVICE_NV attribute; where no device reports it, the physical index
    from CUDA_VISIBLE_DEVICES is used as the EGL index (the usual order on NVIDIA-only nodes).
    """
    if device_index is None:
        try:
            import torch

            if not torch.cuda.is_available():
                return None
            count, current = torch.cuda.device_count(), torch.cuda.current_device()
        except Exception:  # noqa: BLE001 - no usable CUDA: the default EGL device
            return None
        device_index = local_cuda_ordinal(os.environ, count)
        if device_index is None:
            device_index = current
    try:
        ordinals = _egl_devices_cuda_ordinals()
    except OSError:
        ordinals = []
    if device_index in ordinals:
        return ordinals.index(device_index)
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    physical = int(visible[device_index]) if device_index < len(visible) and visible[device_index].isdigit() else device_index
    if ordinals and physical >= len(ordinals):
        raise RenderError(f"MeshRenderer: device_index={device_index} (physical GPU {physical}) has no EGL device; found {len(ordinals)}")
    return physical


def create_context(device_index: Optional[int] = None) -> Any:
    """A standalone headless OpenGL 3.3 ``moderngl.Context`` on the EGL device of CUDA device ``device_index``.

    device_index: as :func:`select_egl_device`. Raises RenderError naming the EGL device and what
    to install when no context can be made.
    """
    egl_index = select_egl_device(device_index)
    _load_torch_compiler_first()
    try:
        import moderngl

        kwargs = {"backend": "egl", "require": 330}
        if egl_index is not None:
            kwargs["device_index"] = egl_index
        return moderngl.create_standalone_context(**kwargs)
    except Exception as err:  # noqa: BLE001 - re-raised with what to check
        raise RenderError(
            f"MeshRenderer: cannot create a headless EGL OpenGL 3.3 context (EGL device {egl_index}): {err}; "
            "needs libEGL (Mesa on CPU machines, the NVIDIA driver on GPU nodes)"
        ) from err
