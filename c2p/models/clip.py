"""CLIP from open_clip by name, with weights only ever read from a local file.

There is no model hub here (nor on many clusters), so :func:`create_clip` never downloads:
``pretrained`` is a path to a ``.pt``/``.bin``/``.safetensors`` file or empty (random init,
seeded by the caller). Two tiny architectures are registered with open_clip so tests and
the demo run on a CPU:

| name        | image | patch | vision width×layers | text width×layers | embed | params |
|-------------|-------|-------|---------------------|-------------------|-------|--------|
| ``c2p-tiny``  | 32²   | 8     | 64×2                | 64×2 (ctx 77)     | 64    | ~3.4M (3.2M of it the 49408-token embedding) |
| ``c2p-small`` | 64²   | 16    | 192×4               | 128×4 (ctx 32)    | 128   | ~9.0M (6.3M embedding) |

``c2p-small`` uses 16-pixel patches (a 4×4 grid at 64²): 4× cheaper than 8-pixel ones, which
lets the demo train its CLIP and two depth towers in minutes on a CPU.

Both use the default CLIP BPE tokenizer (vocab 49408), so ``get_tokenizer`` works as for
any open_clip model; ``c2p-small`` shortens the context to 32 tokens because captions and
prompts here are a few words and the text tower is half the CPU cost at 77.
"""

from __future__ import annotations

import logging
import os
from copy import deepcopy
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "c2p-tiny": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
    "c2p-small": {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 64, "layers": 4, "width": 192, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
    },
}


def register_tiny_configs() -> list[str]:
    """Register ``c2p-tiny`` and ``c2p-small`` with open_clip (idempotent); returns their names.

    open_clip only registers configs from JSON files on disk (``add_model_config(path)``); we
    put the dicts straight into its registry instead, so nothing is written anywhere and
    ``open_clip.create_model(name)`` / ``open_clip.get_tokenizer(name)`` (and open_clip_train,
    in the same process) see them. A later ``add_model_config`` rescan keeps them: the rescan
    only adds entries.
    """
    from open_clip import factory

    registry = getattr(factory, "_MODEL_CONFIGS", None)
    if not isinstance(registry, dict):  # an open_clip without the dict: go through its public file API
        import json
        import tempfile

        if set(TINY_CONFIGS) <= set(factory.list_models()):
            return list(TINY_CONFIGS)

        folder = Path(tempfile.mkdtemp(prefix="c2p-open_clip-configs-"))
        for name, cfg in TINY_CONFIGS.items():
            (folder / f"{name}.json").write_text(json.dumps(cfg))
        factory.add_model_config(folder)
        return list(TINY_CONFIGS)
    for name, cfg in TINY_CONFIGS.items():
        if registry.get(name) != cfg:
            registry[name] = deepcopy(cfg)
    return list(TINY_CONFIGS)


def _check_name(name: str) -> None:
    import open_clip

    if ":" in name:
        raise ValueError(f"CLIP model name {name!r}: schema names (hf-hub:, local-dir:) are not supported; "
                         f"expected an open_clip architecture name, weights go in pretrained=<local file>")
    if name not in open_clip.list_models():
        raise ValueError(f"CLIP model name {name!r} is not an open_clip architecture; expected one of "
                         f"{', '.join(TINY_CONFIGS)} or e.g. ViT-B-32 (see open_clip.list_models())")


def read_state_dict(path: str | os.PathLike, *, model_name: str = "") -> dict[str, torch.Tensor]:
    """Tensors of a local weights file: a plain state dict, or an open_clip_train / DeepSpeed-style
    checkpoint dict with a ``state_dict`` (or ``module``/``model``) entry. Prefixes added by DDP
    (``module.``) and ``torch.compile`` (``_orig_mod.``) are stripped.

    Raises FileNotFoundError / ValueError naming ``path`` (and ``model_name`` when given).
    """
    path = Path(path)
    for_model = f" for CLIP model {model_name!r}" if model_name else ""
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {str(path)!r}{for_model} does not exist; expected a local "
            f"{'/'.join(WEIGHT_SUFFIXES)} file (weights are never downloaded from a hub)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            # weights_only: a weights file must not be able to run code on load
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickle with code, wrong format
        raise ValueError(f"weights file {str(path)!r}{for_model} could not be read: {type(e).__name__}: {e}") from e
    if isinstance(obj, Mapping):
        for entry in ("state_dict", "module", "model"):
            if entry in obj and isinstance(obj[entry], Mapping):
                obj = obj[entry]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"weights file {str(path)!r}{for_model} holds {type(obj).__name__}; expected a state dict "
                         f"of tensors or a checkpoint dict with a 'state_dict' entry")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def load_weights(module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str, model_name: str) -> None:
    """Strictly load ``state_dict`` into ``module``; any missing, unexpected or mis-shaped key is a
    ValueError naming ``source`` (the file), ``model_name`` and the first offending keys."""
    state_dict = dict(state_dict)
    own = module.state_dict()
    # open_clip versions differ in whether logit_scale is 0-d or [1]
    for key in ("logit_scale", "logit_bias"):
        if key in own and key in state_dict and state_dict[key].numel() == own[key].numel():
            state_dict[key] = state_dict[key].reshape(own[key].shape)
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    problems = []
    if mismatched:
        problems.append(f"shape mismatch at {'; '.join(mismatched[:5])}")
    if missing:
        problems.append(f"missing keys {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    if problems:
        raise ValueError(f"weights file {source!r} does not fit CLIP model {model_name!r}: {', '.join(problems)}")
    module.load_state_dict(state_dict, strict=True)


class _OnlyErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


@contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Mute open_clip's warnings while it builds a model: it logs through the root logger, so only
    records made on the root logger are filtered. Not ``logging.disable``: that is process-wide,
    and another thread's records (a checkpoint upload's "uploaded ..." line) were lost with it."""
    root, only_errors = logging.getLogger(), _OnlyErrors()
    root.addFilter(only_errors)
    try:
        yield
    finally:
        root.removeFilter(only_errors)


def create_clip(name: str, pretrained: str = "", device: str | torch.device = "cpu") -> nn.Module:
    """An open_clip ``CLIP`` of architecture ``name`` in eval mode, fp32, on ``device``.

    ``pretrained``: local weights file (plain state dict, open_clip_train checkpoint with
    ``state_dict``, ``module.`` prefixes allowed) or ``""`` for random init (seed it yourself
    with ``torch.manual_seed``). Never downloads; open_clip's pretrained tags ("openai", ...)
    are refused unless a file of that name exists.
    """
    import open_clip

    register_tiny_configs()
    _check_name(name)
    state_dict = read_state_dict(pretrained, model_name=name) if pretrained else None
    # load_weights=False + pretrained=None: open_clip itself never looks for weights. Its
    # "No pretrained weights loaded" warning is muted: here that is the intended path.
    with _quiet_open_clip():
        model = open_clip.create_model(name, pretrained=None, load_weights=False, pretrained_text=False, device="cpu")
    if state_dict is not None:
        load_weights(model, state_dict, source=str(pretrained), model_name=name)
    return model.to(device).eval()


def meta_clip(name: str) -> nn.Module:
    """An open_clip ``CLIP`` of architecture ``name`` on the meta device: its parameter names,
    shapes, ``image_size`` and ``output_dim`` at no memory and in milliseconds (a launcher checks
    weights files and settings against it). Raises ValueError for an unknown ``name``."""
    import open_clip

    register_tiny_configs()
    _check_name(name)
    with _quiet_open_clip(), torch.device("meta"):  # "No pretrained weights loaded": intended, as in create_clip
        return open_clip.create_model(name, pretrained=None, load_weights=False, pretrained_text=False, device="meta")


def load_visual(name: str, path: str, device: str | torch.device = "cpu") -> nn.Module:
    """The visual tower of architecture ``name`` with weights from ``path``: either a depth tower
    export (keys of a plain open_clip visual tower, e.g. ``conv1.weight``) or a whole CLIP
    state dict (``visual.*`` keys are taken). Errors name the file, model and keys."""
    sd = read_state_dict(path, model_name=name)
    if any(k.startswith("visual.") for k in sd):
        sd = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    visual = create_clip(name).visual
    load_weights(visual, sd, source=str(path), model_name=f"{name} (visual tower)")
    return visual.to(device).eval()


def get_tokenizer(name: str) -> Callable[..., torch.Tensor]:
    """open_clip tokenizer of ``name``: ``tokenizer(list[str]) -> LongTensor[N, context_length]``."""
    import open_clip

    register_tiny_configs()
    _check_name(name)
    return open_clip.get_tokenizer(name)


def image_size(model: nn.Module) -> int:
    """Input side length in pixels of a CLIP model (or of its visual tower)."""
    visual = getattr(model, "visual", model)
    size = visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def embed_dim(model: nn.Module) -> int:
    """Dimension D of the joint embedding (output of the visual tower's projection)."""
    visual = getattr(model, "visual", model)
    return int(visual.output_dim)


@torch.no_grad()
def encode_text(model: nn.Module, tokenizer: Callable[..., torch.Tensor], class_names: Sequence[str],
                templates: Sequence[str]) -> torch.Tensor:
    """Zero-shot classifier weights ``[C, D]``: per class, the mean over ``templates`` of the
    L2-normalised text embeddings, normalised again (CLIP's recipe).

    ``templates``: format strings with ``{}`` (or ``{class}``) for the class name, e.g.
    ``"image of a {}."`` (the CLIP2Point prompt).
    """
    if not class_names or not templates:
        raise ValueError(f"encode_text: {len(class_names)} class names and {len(templates)} templates; expected >= 1 of each")
    device = next(model.parameters()).device
    prompts = [t.replace("{class}", "{}").format(c) for c in class_names for t in templates]
    feats = model.encode_text(tokenizer(prompts).to(device)).float()
    feats = nn.functional.normalize(feats, dim=-1).view(len(class_names), len(templates), -1).mean(dim=1)
    return nn.functional.normalize(feats, dim=-1)
