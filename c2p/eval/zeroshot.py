"""Zero-shot point-cloud classification through CLIP's text tower.

Each object is rendered to V depth views; a visual tower (the exported CLIP2Point depth tower,
or CLIP's own image tower for the PointCLIP-style baseline) encodes each view; the logits are
the cosine similarities of each view's feature with the prompt-template text features of the
class names, summed over the views (the original's recipe):

    logits[n, c] = sum_v cos(f[n, v], t[c])

    results = evaluate_zeroshot(load_config(DownstreamConfig, "configs/downstream/zeroshot_tiny.yaml"))
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from c2p.config import config_hash, to_dict
from c2p.config.downstream import DownstreamConfig
from c2p.eval.errors import EvalError
from c2p.eval.features import ViewFeatureCache, ViewSetting, cache_dir, encode_views, module_hash
from c2p.eval.report import classification_metrics, eval_dir, write_report
from c2p.eval.splits import Split, load_split
from c2p.eval.towers import Towers, build_towers, resolve_device, view_setting

__all__ = ["zeroshot_logits", "prompt_names", "classify_zeroshot", "evaluate_zeroshot", "PromptLog"]

log = logging.getLogger(__name__)


def zeroshot_logits(view_features: Tensor, text_features: Tensor) -> Tensor:
    """view_features: [N,V,D], text_features: [C,D] → [N,C], the sum over views of cosine similarities."""
    if view_features.dim() != 3 or text_features.dim() != 2 or view_features.shape[-1] != text_features.shape[-1]:
        raise ValueError(
            f"zero-shot features: view features {list(view_features.shape)} and text features "
            f"{list(text_features.shape)}; expected [N,V,D] and [C,D] with the same D"
        )
    v = F.normalize(view_features.float(), dim=-1)
    t = F.normalize(text_features.float(), dim=-1)
    return torch.einsum("nvd,cd->nc", v, t)


def prompt_names(classes: list[str]) -> list[str]:
    """Class names as they go into a prompt: ``"night_stand"`` → ``"night stand"``."""
    return [c.replace("_", " ") for c in classes]


class PromptLog:
    """A tokenizer that records every prompt it tokenises (``prompts``), so a report can show
    the prompts that actually reached the text tower, not the ones a config meant."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.prompts: list[str] = []

    def __call__(self, texts, *args, **kwargs):
        self.prompts += [texts] if isinstance(texts, str) else list(texts)
        return self.tokenizer(texts, *args, **kwargs)


def classify_zeroshot(
    split: Split,
    visual: nn.Module,
    text_features: Tensor,
    setting: ViewSetting,
    cache: ViewFeatureCache | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Zero-shot logits [N,C] of a split's objects with ``visual`` ([B,3,H,W] → [B,D]) against
    ``text_features`` [C,D] (one row per entry of ``split.classes``)."""
    if text_features.shape[0] != len(split.classes):
        raise EvalError(f"text features: {text_features.shape[0]} rows; expected one per class of the split ({len(split.classes)})")
    if cache is not None:
        feats = cache.features(split.points, visual, setting, batch_size=batch_size, device=device)
    else:
        feats = encode_views(split.points, visual, setting, batch_size=batch_size, device=device)
    return zeroshot_logits(feats, text_features.cpu())


def evaluate_zeroshot(cfg: DownstreamConfig, *, visual: nn.Module | None = None, text_features: Tensor | None = None,
                      towers: Towers | None = None) -> dict:
    """Zero-shot evaluation of ``cfg.data.test_split``; writes the report to ``<run>/eval/zeroshot/``.

    The visual tower is the exported depth tower (``encoder.depth_tower``) or, when none is
    set, CLIP's image tower (the PointCLIP-style baseline). ``visual`` and ``text_features``
    ([C,D], classes in split order) replace the towers built from ``cfg.encoder`` (then
    ``encoder.image_size`` must be set); ``towers`` replaces only the building (its tokenizer and
    text tower still turn ``encoder.templates`` into text features). Returns the results dict
    (also in results.json), with ``prompts`` as tokenised and ``points_per_object`` as rendered.
    """
    t0 = time.perf_counter()
    device = resolve_device(cfg.encoder.device)
    split = load_split(cfg.data, cfg.data.test_split)
    prompts: list[str] = []
    if visual is not None and text_features is not None:
        setting = view_setting(cfg.encoder)
        encoder_name, ckpt_hash, clip_hash = "given", module_hash(visual), ""
    elif visual is None and text_features is None:
        towers = towers if towers is not None else build_towers(cfg.encoder, seed=cfg.run.seed, device=device)
        from c2p.models.clip import encode_text

        tokenizer = PromptLog(towers.tokenizer)
        text_features = encode_text(towers.model, tokenizer, prompt_names(split.classes), cfg.encoder.templates)
        prompts = tokenizer.prompts
        visual = towers.depth_visual if towers.depth_visual is not None else towers.clip_visual
        encoder_name = "depth_tower" if towers.depth_visual is not None else "clip_visual"
        setting = view_setting(cfg.encoder, towers.model)
        ckpt_hash, clip_hash = towers.depth_hash, towers.clip_hash
    else:
        raise ValueError("evaluate_zeroshot: give both visual and text_features, or neither")
    visual = visual.to(device)
    cache = ViewFeatureCache(cache_dir(cfg))
    logits = classify_zeroshot(split, visual, text_features, setting, cache, cfg.encoder.batch_size, device)
    metrics, cm = classification_metrics(logits, split.labels, split.classes)
    results = {
        "task": "zeroshot",
        "run": cfg.run.name,
        "corpus": cfg.data.corpus,
        "split": split.split,
        "encoder": encoder_name,
        "views": setting.views,
        "image_size": setting.image_size,
        "templates": list(cfg.encoder.templates),
        "points_per_object": int(split.points.shape[1]),  # as rendered: [N,P,3] after sampling
        "prompts": prompts,  # as tokenised (empty when text features were given)
        "metrics": metrics,
        "skipped_objects": len(split.errors),
        "checkpoint_hash": ckpt_hash,
        "clip_hash": clip_hash,
        "config_hash": config_hash(cfg),
        "config": to_dict(cfg),
    }
    paths = write_report(eval_dir(cfg) / "zeroshot", results, cm, split.classes)
    results["report"] = {k: str(v) for k, v in paths.items()}
    log.info(
        "zero-shot %s/%s: top-1 %.2f%% top-5 %.2f%% over %d objects (%s, %.1fs, cache hits %d)",
        cfg.data.corpus, split.split, 100 * metrics["top1"], 100 * metrics["top5"], metrics["n"], encoder_name,
        time.perf_counter() - t0, cache.hits,
    )
    return results
