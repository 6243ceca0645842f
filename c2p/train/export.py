"""The export of a pre-training run: one consolidated fp32 depth tower that fine-tuning and
evaluation load without DeepSpeed.

    <out>/depth_tower.safetensors   the depth tower, fp32, keys of a plain open_clip visual tower
                                    (``create_clip(name).visual.load_state_dict(...)`` works)
    <out>/depth_tower.json          model, embed_dim, image_size, depth settings, step, tag, config hash, source
    <out>/probe.safetensors         end of training only: a fixed probe batch and the engine's features
                                    of it, so that anyone can check the file against the trained tower

Three ways in: :func:`export_after_training` at the end of :func:`c2p.train.pretrain.run`
(called on every rank), :func:`export_run` on the folder of a run, and :func:`export_job`, the
body of the export command's job (target ``c2p.train.export:export_job``). The weights come
from a committed tag, so this module needs no engine and imports no DeepSpeed until it reads the
weights (weights-only, through :func:`c2p.train.ckptload.consolidated_state_dict`). A tag whose files do not match its commit
marker, and weights that are not all finite, are refused: no file is written for them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from c2p.config.pretrain import PretrainConfig
from c2p.fileio import atomic_write_bytes
from c2p.train.checkpoint import COMMIT_NAME, CheckpointIntegrityError, CommittedTag, committed_tags, read_commit, verify_tag
from c2p.train.ckptverify import problems_text

log = logging.getLogger("c2p.train")

__all__ = ["EXPORT_DIR", "DEPTH_TOWER_FILE", "DEPTH_TOWER_INFO", "PROBE_FILE", "export_depth_tower", "export_after_training",
           "export_run", "export_job", "NonFiniteTensorError", "check_finite"]

EXPORT_DIR = "export"  # inside a run directory
DEPTH_TOWER_FILE = "depth_tower.safetensors"
DEPTH_TOWER_INFO = "depth_tower.json"
PROBE_FILE = "probe.safetensors"
# The probe is a fixed function of this seed, so probes of two runs are the same images.
_PROBE_SEED, _PROBE_BATCH = 0, 2


class NonFiniteTensorError(ValueError):
    """Weights holding NaN or ±inf: an export or evaluation of them would be meaningless."""


def check_finite(tensors: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`NonFiniteTensorError` naming ``source``, the first tensor with NaN/±inf and
    how many of its elements are, and how many tensors are affected."""
    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in tensors.items() if v.is_floating_point()}
    bad = {k: n for k, n in bad.items() if n}
    if bad:
        k = next(iter(bad))
        raise NonFiniteTensorError(
            f"{source}: tensor {k!r} holds {bad[k]} non-finite values (NaN/inf) of {tensors[k].numel()} "
            f"({len(bad)} of {len(tensors)} tensors affected); expected finite weights (the run diverged or the "
            "file is damaged)")


def _fresh_model(config: dict) -> torch.nn.Module:
    """A CPU CLIP2Point module of a tag's config dict; its random init is overwritten by the tag."""
    from c2p.config.core import build_config
    from c2p.train.pretrain import (
        build_clip2point,  # lazy: the training module imports this one
    )

    return build_clip2point(build_config(PretrainConfig, config), pretrained=False)[1]


def export_depth_tower(tag_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``<out_dir>/depth_tower.safetensors`` (+ ``depth_tower.json``) from a committed tag.

    A fresh CPU CLIP2Point module of the tag's config gets the tag's consolidated fp32 weights,
    and its ``depth_tower_state_dict()`` is written (every tensor fp32, the visual tower's
    shapes, e.g. ``conv1.weight [width,3,patch,patch]``). Returns the safetensors path.
    Raises ValueError for a tag without commit marker, :class:`CheckpointIntegrityError` when a
    file of the tag does not match the marker, :class:`c2p.train.ckptload.UnsafeCheckpointError`
    for a file a weights-only load refuses, :class:`NonFiniteTensorError` naming a NaN/inf tensor,
    RuntimeError when the weights do not fit the config's model.
    """
    from safetensors.torch import save

    from c2p.train.ckptload import consolidated_state_dict

    tag_dir, out_dir = Path(tag_dir), Path(out_dir)
    meta = read_commit(tag_dir)
    if meta is None:
        raise ValueError(f"{tag_dir} has no {COMMIT_NAME}; expected a committed tag")
    problems = verify_tag(CommittedTag(tag_dir.name, int(meta.get("step", 0)), tag_dir, meta))
    if problems:
        raise CheckpointIntegrityError(f"{tag_dir} fails verification: {problems_text(problems)}; expected a tag whose "
                                       "files match its commit marker (export an older tag with --tag)")
    if problems is None:
        log.warning("%s was committed without checksums: exporting it unverified", tag_dir)
    model = _fresh_model(meta["config"])
    missing, unexpected = model.load_state_dict(consolidated_state_dict(tag_dir), strict=False)
    missing = [k for k in missing if model.state_dict()[k].dtype.is_floating_point]
    if missing or unexpected:
        raise RuntimeError(f"{tag_dir}: consolidated weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    tower = {k: v.detach().float().contiguous().clone() for k, v in model.depth_tower_state_dict().items()}
    check_finite(tower, f"{tag_dir}: depth tower")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / DEPTH_TOWER_FILE
    # The depth maps it learnt from: evaluation warns when it renders others (another point radius).
    depth = {k: meta["config"].get("depth", {}).get(k) for k in ("image_size", "radius", "dist")}
    atomic_write_bytes(path, save(tower, metadata={"model": str(meta["signature"].get("model")), "step": str(meta["step"]),
                                                   "depth": json.dumps(depth)}))
    info = {"model": meta["signature"].get("model"), "embed_dim": meta["signature"].get("embed_dim"),
            "image_size": meta["signature"].get("image_size"), "depth": depth, "step": meta["step"], "tag": meta["tag"],
            "config_hash": meta["config_hash"], "source": str(tag_dir.resolve()), "file": path.name}
    atomic_write_bytes(out_dir / DEPTH_TOWER_INFO, json.dumps(info, indent=1).encode())
    log.info("exported depth tower of %s to %s", tag_dir, path)
    return path


def export_after_training(engine, cfg: PretrainConfig, tag_dir: Path, out_dir: Path, rank: int,
                          device: torch.device, dtype: torch.dtype) -> str | None:
    """End of a run: the depth tower of the final tag ``tag_dir`` plus ``probe.safetensors``.

    The probe is ``images`` [2,3,S,S] float (S = ``depth.image_size``, standard normal) and
    ``features`` [2,D] float32, the engine's depth-tower output for them. A collective: every
    rank runs the probe forward (under ZeRO-3 the parameters are gathered across ranks); rank 0
    writes the files and returns the safetensors path, other ranks return None. When rank 0's
    export is refused (a damaged tag, NaN/inf weights) every rank raises, naming the cause, so
    none waits in the run's last barrier for a rank that is gone.
    """
    import torch.distributed as dist
    from safetensors.torch import save_file

    size = cfg.depth.image_size
    probe = torch.randn(_PROBE_BATCH, 3, size, size, generator=torch.Generator().manual_seed(_PROBE_SEED))
    engine.module.eval()
    with torch.no_grad():
        feats = engine.module.depth(probe.to(device, dtype)).float().cpu()
    engine.module.train()
    path, error = None, None
    if rank == 0:
        try:
            path = export_depth_tower(tag_dir, out_dir)
            save_file({"images": probe.contiguous(), "features": feats.contiguous()}, str(out_dir / PROBE_FILE))
        except (ValueError, RuntimeError, OSError) as e:
            error = e
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [None if error is None else f"{type(error).__name__}: {error}"]
        dist.broadcast_object_list(box, src=0)
        if rank != 0 and box[0]:
            raise RuntimeError(f"the export on rank 0 failed: {box[0]}")
    if error is not None:
        raise error
    return str(path) if path else None


def export_run(run_dir: str | Path, tag: str | None = None, out_dir: str | Path | None = None) -> Path:
    """Export the depth tower of ``tag`` (None: the newest committed) of a run folder, no engine.

    Writes ``<run_dir>/export/`` unless ``out_dir`` is given; returns the safetensors path.
    Raises FileNotFoundError when the run has no committed tag, ValueError for an unknown tag.
    """
    run_dir = Path(run_dir)
    tags = {t.tag: t for t in committed_tags(run_dir / "checkpoints")}
    if not tags:
        raise FileNotFoundError(f"{run_dir / 'checkpoints'} holds no committed step_XXXXXXXX tag")
    if tag is not None and tag not in tags:
        raise ValueError(f"tag={tag!r} is not a committed tag of {run_dir}; expected one of {sorted(tags)}")
    chosen = tags[tag] if tag else tags[max(tags)]
    return export_depth_tower(chosen.path, out_dir or run_dir / EXPORT_DIR)


def export_job(spec: dict[str, Any]) -> str:
    """Body of the export command's job: ``spec = {"run_dir", "tag" (None: newest committed),
    "out" (None: <run_dir>/export)}``; returns the path of the exported safetensors file."""
    return str(export_run(spec["run_dir"], spec.get("tag"), spec.get("out")))
