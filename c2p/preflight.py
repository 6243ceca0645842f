"""Launcher-side checks of the inputs a config names, made before anything is written.

A job that finds a bad input itself fails after the run directory, ``config.yaml``,
``plan.json`` or the SLURM job exist, sometimes minutes in (after DeepSpeed started), with an
error that names a file but not the config key. These checks read what the job would read, in
the launcher process, and raise :class:`~c2p.config.ConfigError` naming the key, the value and
what was expected; the commands turn that into exit status 2 (:mod:`c2p.cli.base`).

| check                  | what it reads                                           | cost |
|------------------------|---------------------------------------------------------|------|
| :func:`check_model`    | the architecture, built on the meta device              | ms, no tensor memory |
| :func:`check_weights`  | the file's first and last bytes, then ``torch.load(weights_only=True)``, shapes against the meta model | one read of the file |
| :func:`check_shards`   | ``index.json`` of each entry, a stat of every tar       | ms per thousand tars |
| :func:`check_output_dir` | the nearest existing folder; a probe file created and removed there | one create |
| :func:`check_pretrain` | all of the above for a pre-training config, the batch split, ``checkpoint.resume`` | the sum |
| :func:`check_render`   | the output folder, the feature model and its weights (before ``plan.json`` records them) | the sum |
| :func:`check_encoder`  | evaluation's CLIP model, its weights, the depth tower file | the sum |

The jobs keep their own checks: a file can change between the launcher and the job.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from c2p.config.core import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from c2p.config.downstream import EncoderConfig
    from c2p.config.pretrain import DataConfig, PretrainConfig
    from c2p.config.render import RenderJobConfig

__all__ = ["check_model", "check_weights", "check_shards", "check_output_dir", "check_pretrain", "check_render", "check_encoder"]

_ZIP_MAGIC, _ZIP_END = b"PK\x03\x04", b"PK\x05\x06"
_ZIP_TAIL = 22 + 65535  # end-of-central-directory record + the longest zip comment


def _one_line(e: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line, cut at ``limit`` characters; of torch's long weights-only
    refusal, the sentence that says what the file holds (e.g. ``Trying to load unsupported GLOBAL posix.system``)."""
    text = " ".join(str(e).split())
    if text.startswith("Weights only load failed"):  # torch's advice on weights_only=False is not ours to give
        found = [s.strip() for s in text.split(". ") if "GLOBAL" in s or "Unsupported" in s]
        text = "refused to run code from the file: " + (found[0] if found else text)
    return f"{type(e).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def check_model(key: str, name: str) -> "nn.Module":
    """The open_clip architecture ``name`` on the meta device (shapes, image size, output size);
    ConfigError naming ``key`` when open_clip has no such architecture."""
    from c2p.models.clip import meta_clip

    try:
        return meta_clip(name)
    except ValueError as e:
        raise ConfigError(key, name, "an open_clip architecture name: c2p-tiny, c2p-small, ViT-B-32, ... "
                                     "(see open_clip.list_models())") from e


def weights_format(path: str | os.PathLike) -> str:
    """``"zip"`` (torch.save), ``"pickle"`` (legacy torch.save), ``"safetensors"``, ``"truncated zip"``
    (a zip without its end record: cut short) or ``"unknown"``, from the file's first and last bytes."""
    with open(path, "rb") as f:
        head = f.read(9)
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - _ZIP_TAIL))
        tail = f.read()
    if head.startswith(_ZIP_MAGIC):
        return "zip" if _ZIP_END in tail else "truncated zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # pickle protocol 2-5
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{" and 8 < int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"  # u64 header length, then the JSON header
    return "unknown"


def check_weights(key: str, path: str, model_name: str, model: "nn.Module | None" = None) -> None:
    """``path`` is a weights file of ``model_name``: it exists, looks like a torch.save or
    safetensors file, loads with ``weights_only=True`` (so it runs no code) and, when ``model``
    (a :func:`check_model` result) is given, fits it key for key and shape for shape.
    Raises ConfigError naming ``key``."""
    from c2p.models.clip import load_weights, read_state_dict

    file = Path(path)
    if not file.is_file():
        raise ConfigError(key, path, "an existing local weights file (.pt/.pth/.bin/.safetensors; weights are never downloaded)")
    kind = weights_format(file)
    if kind == "unknown":
        raise ConfigError(key, path, f"a torch.save or safetensors weights file (this one starts with {file.read_bytes()[:16]!r})")
    if kind == "truncated zip":
        raise ConfigError(key, path, "a whole torch.save file (this zip archive has no end record: cut short, or still being copied)")
    try:
        state = read_state_dict(file, model_name=model_name)
    except (OSError, ValueError) as e:
        raise ConfigError(key, path, f"weights that torch.load(weights_only=True) reads ({_one_line(e.__cause__ or e)})") from e
    if model is None:
        return
    try:
        with warnings.catch_warnings():  # loading into meta tensors checks names and shapes, copies nothing
            warnings.simplefilter("ignore")
            load_weights(model, state, source=str(path), model_name=model_name)
    except ValueError as e:
        detail = str(e).partition(f"does not fit CLIP model {model_name!r}: ")[2] or str(e)
        raise ConfigError(key, path, f"weights of CLIP model {model_name!r} (this file does not fit it: {detail[:600]})") from e


def check_shards(data: "DataConfig", *, world_size: int) -> list:
    """Every ``data.shards`` entry resolves (a directory whose ``index.json`` is readable and whose
    tars all exist, or a pattern of existing tars) and, for finite passes (``data.resampled=false``),
    has a shard for every reader lane of the job (world size x workers). Returns the resolved
    :class:`~c2p.data.shardlist.ShardSource` of each entry."""
    from c2p.data.shardlist import check_finite_passes, resolve_shards

    sources = []
    for i, spec in enumerate(data.shards):
        try:
            sources.append(resolve_shards(spec))
        except (OSError, ValueError) as e:
            raise ConfigError(f"data.shards[{i}]", spec, f"a shard directory with a valid index.json and every tar it lists, "
                                                         f"or a pattern of existing .tar files ({_one_line(e)})") from e
    if not data.resampled:
        check_finite_passes(sources, world_size=world_size, workers=data.workers)
    return sources


def check_output_dir(key: str, path: str) -> None:
    """``path`` is, or can be made, a directory this process can write into. The probe creates
    and removes one file in the nearest existing folder (``os.access`` says yes to root on a
    read-only mount). An ``s3://`` address: its bucket answers a listing with these credentials."""
    from c2p import storage

    if storage.is_remote(path):
        try:
            storage.S3Path.parse(path)
            storage.list_names(path)
        except (ValueError, OSError) as e:
            raise ConfigError(key, path, f"a reachable s3://bucket/prefix ({e})") from e
        return
    target = Path(path).expanduser().absolute()
    if target.exists() and not target.is_dir():
        raise ConfigError(key, path, "an output directory (this path is a file)")
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(key, path, f"an output directory ({existing} is a file, so nothing can be created under it)")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".c2p-write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(key, path, f"a writable directory ({existing} is not writable: {e.strerror})") from e


def check_pretrain(cfg: "PretrainConfig", *, nodes: int | tuple[int, int], tasks_per_node: int, gpus_per_node: int) -> None:
    """What a pre-training job would otherwise find out after its run directory exists: the
    shards, the model name, the weights file, the image sizes, the batch split over
    ``nodes x tasks_per_node`` ranks, the device settings and an explicit ``checkpoint.resume``.

    ``nodes``: a count, or ``(min, max)`` for an elastic job: the batch must split over every
    world size the job may restart at, and the shards must serve the largest."""
    from c2p.models.clip import image_size

    fewest, most = nodes if isinstance(nodes, tuple) else (nodes, nodes)
    world = most * tasks_per_node
    for n in range(fewest, most + 1):
        per_step = n * tasks_per_node * cfg.train.grad_accum
        if cfg.train.batch_size % per_step:
            at = f" (--nodes {fewest}-{most} may run on {n})" if fewest < most else ""
            raise ConfigError("train.batch_size", cfg.train.batch_size,
                              f"a multiple of nodes x tasks-per-node x train.grad_accum = {n} x {tasks_per_node} x "
                              f"{cfg.train.grad_accum} = {per_step}{at}")
    if cfg.train.backend == "nccl" and not gpus_per_node:
        raise ConfigError("train.backend", "nccl", "gloo or auto when no GPUs are requested (--gpus-per-node 0)")
    if cfg.train.precision == "bf16" and not gpus_per_node:
        raise ConfigError("train.precision", "bf16", "fp32 or auto on CPU ranks (--gpus-per-node 0)")
    sources = check_shards(cfg.data, world_size=world)
    uncounted = [s.spec for s in sources if s.num_samples is None]
    if not cfg.train.epoch_samples and uncounted:  # the lr schedule's epoch length comes from index.json counts
        raise ConfigError("train.epoch_samples", 0, f"the samples in one epoch, as data.shards entry {uncounted[0]!r} "
                                                    "has no index.json with sample counts beside its tars")
    model = check_model("model.name", cfg.model.name)
    side = image_size(model)
    if cfg.depth.image_size != side:
        raise ConfigError("depth.image_size", cfg.depth.image_size, f"the input size of {cfg.model.name} ({side})")
    if not cfg.data.imgfeat_tag and cfg.data.image_size != side:  # RGB goes through the frozen image tower
        raise ConfigError("data.image_size", cfg.data.image_size, f"the input size of {cfg.model.name} ({side}), "
                                                                  "as the frozen image tower reads the RGB views")
    if cfg.model.pretrained:
        check_weights("model.pretrained", cfg.model.pretrained, cfg.model.name, model)
    if cfg.checkpoint.resume not in ("auto", "none"):
        _check_resume(cfg, model, world)
    if cfg.checkpoint.remote:  # the bucket answers a listing with these credentials
        check_output_dir("checkpoint.remote", cfg.checkpoint.remote)


def _check_resume(cfg: "PretrainConfig", model: Any, world: int) -> None:
    """An explicit ``checkpoint.resume`` is a committed tag (or a folder holding one) of this model:
    the job's own resolution (:meth:`CheckpointManager.resolve`: commit markers, model signature)."""
    from c2p.config.core import config_hash, to_dict
    from c2p.train.checkpoint import CheckpointManager
    from c2p.train.pretrain import model_signature

    manager = CheckpointManager(Path(cfg.run.dir) / cfg.run.name / "checkpoints", rank=0, world_size=world,
                                zero_stage=cfg.train.zero_stage, every=cfg.checkpoint.every, keep=cfg.checkpoint.keep,
                                signature=model_signature(cfg, model.visual), config=to_dict(cfg), config_hash=config_hash(cfg))
    try:
        manager.resolve(cfg.checkpoint.resume)
    except (OSError, ValueError, KeyError) as e:  # KeyError: a commit marker without a field
        raise ConfigError("checkpoint.resume", cfg.checkpoint.resume,
                          f"auto, none, or a committed step_XXXXXXXX tag (or a run/checkpoints folder holding one) "
                          f"of the same model ({_one_line(e)})") from e


def check_render(cfg: "RenderJobConfig") -> None:
    """A render job's output can be written, and its feature model and weights load, before the
    job records them in ``plan.json`` (a typo there would make the corrected re-run "another plan")."""
    check_output_dir("out", cfg.out)
    if cfg.imgfeat.model:
        model = check_model("imgfeat.model", cfg.imgfeat.model)
        if cfg.imgfeat.pretrained:
            check_weights("imgfeat.pretrained", cfg.imgfeat.pretrained, cfg.imgfeat.model, model)


def check_encoder(cfg: "EncoderConfig") -> None:
    """Evaluation's CLIP model exists and its weights fit it; the depth tower file is a weights
    file (whether it fits the model is the evaluation's own check, which knows its key prefixes)."""
    model = check_model("encoder.model", cfg.model)
    if cfg.pretrained:
        check_weights("encoder.pretrained", cfg.pretrained, cfg.model, model)
    if cfg.depth_tower:
        from c2p.storage.cache import local_copy

        try:  # an s3:// export is downloaded to the cache the job then reads it from
            local = str(local_copy(cfg.depth_tower))
        except (OSError, ValueError) as e:
            raise ConfigError("encoder.depth_tower", cfg.depth_tower, f"an exported depth tower file or a readable "
                                                                      f"s3://bucket/key of one ({_one_line(e)})") from e
        check_weights("encoder.depth_tower", local, cfg.model)
