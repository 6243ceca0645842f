"""CLIP creation from local files only, the tiny configs, and the CLIP2Point module."""

from __future__ import annotations

import pytest
import torch

from c2p.models.clip import (
    create_clip,
    embed_dim,
    encode_text,
    get_tokenizer,
    image_size,
    load_visual,
    register_tiny_configs,
)
from c2p.models.clip2point import CLIP2PointModel, DepthEncoder, retrieval_top1


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_clip("c2p-tiny")


def test_tiny_configs_registered_idempotently(tiny):
    import open_clip

    assert register_tiny_configs() == register_tiny_configs() == ["c2p-tiny", "c2p-small"]
    assert {"c2p-tiny", "c2p-small"} <= set(open_clip.list_models())
    assert image_size(tiny) == 32 and embed_dim(tiny) == 64
    assert image_size(tiny.visual) == 32
    tok = get_tokenizer("c2p-tiny")
    assert tok(["a red chair"]).shape == (1, 77)
    assert get_tokenizer("c2p-small")(["a red chair", "a table"]).shape == (2, 32)


def test_encode_text_is_normalised_mean_over_templates(tiny):
    tok = get_tokenizer("c2p-tiny")
    w = encode_text(tiny, tok, ["chair", "table", "lamp"], ["image of a {}.", "a photo of a {class}"])
    assert w.shape == (3, 64)
    torch.testing.assert_close(w.norm(dim=-1), torch.ones(3))
    one = encode_text(tiny, tok, ["chair"], ["image of a {}."])
    ref = torch.nn.functional.normalize(tiny.encode_text(tok(["image of a chair."])), dim=-1)
    torch.testing.assert_close(one, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form", ["pt", "safetensors", "open_clip_train"])
def test_weights_round_trip_through_local_file(tiny, tmp_path, form):
    sd = tiny.state_dict()
    if form == "pt":
        path = tmp_path / "clip.pt"
        torch.save(sd, path)
    elif form == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "clip.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:  # what open_clip_train writes under DDP: epoch, name, optimizer, state_dict with module.
        path = tmp_path / "epoch_1.pt"
        torch.save({"epoch": 1, "name": "run", "state_dict": {f"module.{k}": v for k, v in sd.items()},
                    "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}}, path)
    torch.manual_seed(123)  # a different random init that the file must overwrite
    loaded = create_clip("c2p-tiny", pretrained=str(path))
    for k, v in sd.items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.encode_image(x), tiny.encode_image(x))


def test_bad_weight_files_fail_clearly(tiny, tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match=r"nope\.pt.*c2p-tiny.*never downloaded"):
        create_clip("c2p-tiny", pretrained=str(missing))
    with pytest.raises(FileNotFoundError, match="openai"):  # a hub tag is not a file: no download
        create_clip("c2p-tiny", pretrained="openai")
    torch.manual_seed(0)
    small = tmp_path / "small.pt"
    torch.save(create_clip("c2p-small").state_dict(), small)
    with pytest.raises(ValueError, match=r"small\.pt.*c2p-tiny.*shape mismatch at .*file \("):
        create_clip("c2p-tiny", pretrained=str(small))
    partial = tmp_path / "partial.pt"
    sd = tiny.state_dict()
    sd.pop("logit_scale")
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, partial)
    with pytest.raises(ValueError, match=r"partial\.pt.*missing keys \['logit_scale'\].*unexpected keys \['extra\.weight'\]"):
        create_clip("c2p-tiny", pretrained=str(partial))
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.bin.*could not be read"):
        create_clip("c2p-tiny", pretrained=str(garbage))
    with pytest.raises(ValueError, match="hf-hub"):
        create_clip("hf-hub:org/model")
    with pytest.raises(ValueError, match="not-a-model"):
        create_clip("not-a-model")


def test_depth_encoder_is_a_trainable_copy(tiny):
    tiny.requires_grad_(False)
    enc = DepthEncoder(tiny.visual)
    assert all(p.requires_grad for p in enc.parameters())
    assert not any(p.requires_grad for p in tiny.visual.parameters())
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(enc(x), tiny.visual(x))
    with torch.no_grad():
        next(enc.parameters()).add_(1.0)
    assert not torch.allclose(enc(x), tiny.visual(x))


def test_clip2point_forward_shapes_and_gradients(tiny):
    torch.manual_seed(0)
    model = CLIP2PointModel(tiny.visual, temperature=0.07, intra=True)
    pair, img = torch.randn(4, 2, 3, 32, 32), torch.randn(4, 64)
    out = model(pair, img)
    assert set(out) == {"loss", "loss_cross", "loss_intra", "w", "retrieval_top1"}
    assert all(v.ndim == 0 for v in out.values())
    assert out["w"].item() == 1.0 and 0.0 <= out["retrieval_top1"].item() <= 1.0
    out["loss"].backward()
    assert model.loss.w.grad is not None
    assert all(p.grad is not None for p in model.depth.parameters() if p.requires_grad)
    # the two views go through the tower as the batch [view1 of all; view2 of all]
    feats = model.depth(pair[:, 0]), model.depth(pair[:, 1])
    ref = model.loss(*feats, img)
    assert out["loss"].item() == pytest.approx(ref["loss"].item(), rel=1e-5)
    with pytest.raises(ValueError, match=r"depth_pair.*\[B,2,3,H,W\]"):
        model(torch.randn(4, 3, 32, 32), img)
    with pytest.raises(ValueError, match=r"image_feat.*\[4,D\]"):
        model(pair, torch.randn(3, 64))


def test_clip2point_learns_to_align_depth_with_images(tiny):
    """A few optimiser steps on a fixed batch: loss falls and retrieval beats chance."""
    torch.manual_seed(0)
    model = CLIP2PointModel(tiny.visual, intra=True)
    pair = torch.randn(8, 1, 3, 32, 32).repeat(1, 2, 1, 1, 1) + 0.05 * torch.randn(8, 2, 3, 32, 32)
    img = torch.randn(8, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        out = model(pair, img)
        first = first if first is not None else out["loss"].item()
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    out = model(pair, img)
    assert out["loss"].item() < 0.7 * first
    assert out["retrieval_top1"].item() >= 0.75


def test_without_intra_the_loss_is_cross_only(tiny):
    model = CLIP2PointModel(tiny.visual, intra=False)
    out = model(torch.randn(4, 2, 3, 32, 32), torch.randn(4, 64))
    assert out["loss"].item() == pytest.approx(out["loss_cross"].item())
    assert not model.loss.w.requires_grad


def test_depth_tower_state_dict_loads_into_plain_visual_tower(tiny, tmp_path):
    torch.manual_seed(0)
    model = CLIP2PointModel(tiny.visual)
    with torch.no_grad():
        for p in model.depth.parameters():
            p.add_(0.01 * torch.randn_like(p))
    sd = model.depth_tower_state_dict()
    plain = create_clip("c2p-tiny").visual
    plain.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(plain(x), model.depth(x))
    # the export file format downstream reads
    from safetensors.torch import save_file

    path = tmp_path / "depth_tower.safetensors"
    save_file(sd, str(path))
    torch.testing.assert_close(load_visual("c2p-tiny", str(path))(x), model.depth(x))
    with pytest.raises(ValueError, match=r"depth_tower\.safetensors.*c2p-small"):
        load_visual("c2p-small", str(path))


def test_retrieval_top1():
    keys = torch.eye(4)
    assert retrieval_top1(keys * 3, keys).item() == 1.0
    assert retrieval_top1(keys[[1, 0, 2, 3]], keys).item() == 0.5


def test_building_a_model_mutes_open_clip_only_not_other_threads_logs():
    """open_clip's "No pretrained weights loaded" is muted while a model is built; a line another
    thread logs meanwhile (a checkpoint upload's) is kept: no process-wide logging.disable."""
    import logging
    import threading

    from c2p.models.clip import create_clip, meta_clip

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__()
            self.numbers: list[int] = []

        def emit(self, record):
            self.numbers.append(record.args[0])

    other, kept, stop = logging.getLogger("c2p.test.other_thread"), Keep(), threading.Event()
    other.addHandler(kept)
    other.setLevel(logging.INFO)
    other.propagate = False

    def log_numbers():
        i = 0
        while not stop.wait(0.001):  # a line a millisecond: many while each model is built, without starving the build
            other.info("line %d", i)
            i += 1

    root_records = []
    spy = logging.Handler()
    spy.emit = root_records.append
    logging.getLogger().addHandler(spy)
    thread = threading.Thread(target=log_numbers)
    thread.start()
    try:
        for _ in range(3):
            meta_clip("c2p-tiny")
            create_clip("c2p-tiny")
    finally:
        stop.set()
        thread.join()
        logging.getLogger().removeHandler(spy)
        other.removeHandler(kept)
    assert kept.numbers == list(range(len(kept.numbers))) and len(kept.numbers) > 0
    assert not [r for r in root_records if "No pretrained weights" in r.getMessage()]
