"""Frozen image-tower features of every rendered view (``imgfeat.<tag>.npy``).

Pre-training only ever runs the frozen CLIP image tower on unaugmented renders, so its
outputs can be computed once, here, instead of decoding and encoding a PNG per sample per
step. :class:`ImageFeatureEncoder` holds the tower; the render job runs a few of them as Ray
actors (one per GPU on GPU nodes) and the shard tasks send each object's views to one.

Preprocessing (what a loader that feeds ``rgb.<v>.png`` to the tower should match): uint8
RGB → float in [0,1] → bicubic resize (antialiased) to the tower's input size → CLIP
mean/std. Features are ``model.encode_image`` outputs, not L2-normalised (the contrastive
loss normalises), stored as float16 ``[V,D]``.
"""

from __future__ import annotations

import numpy as np


class ImageFeatureEncoder:
    """The image tower of open_clip model ``model_name`` (weights from the local ``pretrained`` file,
    or, when empty, a random init seeded with ``seed``: identical in every actor and every run).

    device: "cpu", "cuda" or "auto" (cuda when this process was given a GPU).
    """

    def __init__(self, model_name: str, pretrained: str = "", device: str = "auto", batch_size: int = 64, seed: int = 0,
                 num_threads: int = 0):
        import torch

        from c2p.models.clip import create_clip, image_size

        if num_threads:
            torch.set_num_threads(num_threads)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        torch.manual_seed(seed)  # random-init towers must be identical in every actor and every run
        model = create_clip(model_name, pretrained, device=device)
        self.visual = model.visual.eval()
        self.device = torch.device(device)
        self.size = image_size(model)
        self.batch_size = batch_size
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        if self.device.type == "cuda":
            self.visual = self.visual.to(self.dtype)

    def preprocess(self, rgb: np.ndarray):
        """uint8 ``[V,H,W,3]`` → float ``[V,3,S,S]`` CLIP-normalised at the tower's size S."""
        import torch

        from c2p.imagenorm import normalize_rgb

        x = torch.from_numpy(np.array(rgb, copy=True))  # Ray hands read-only views of the object store
        return normalize_rgb(x.to(self.device), self.size)

    def encode(self, rgb: np.ndarray) -> np.ndarray:
        """Views of one object, uint8 ``[V,H,W,3]`` → float16 ``[V,D]`` image-tower embeddings."""
        import torch

        rgb = np.asarray(rgb)
        if rgb.ndim != 4 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"rgb: {rgb.dtype} {rgb.shape}; expected uint8 [V,H,W,3]")
        outs = []
        with torch.no_grad():
            for i in range(0, len(rgb), self.batch_size):
                x = self.preprocess(rgb[i : i + self.batch_size]).to(self.dtype)
                outs.append(self.visual(x).float().cpu())
        return torch.cat(outs).numpy().astype(np.float16)

    def ready(self) -> bool:
        """Returns once the model is built (lets the driver wait for the actors before rendering)."""
        return True


def create_feature_actors(model_name: str, pretrained: str, *, count: int, num_gpus: float, batch_size: int, seed: int) -> list:
    """``count`` Ray actors of :class:`ImageFeatureEncoder`, each on ``num_gpus`` GPUs (0: CPU).

    Actors restart after a crash and their calls are retried, so a lost actor costs a few
    re-encoded objects, not the shard (the shard task's ``ray.get`` waits across the restart).
    """
    import ray

    # A runtime env of their own gives the actors fresh worker processes: an idle render-task
    # worker already holds Mesa's LLVM (llvmpipe), and open_clip's import chain (torchvision ->
    # torch._dynamo -> triton) loads a second LLVM that segfaults beside it.
    actor_cls = ray.remote(ImageFeatureEncoder).options(
        num_cpus=0, num_gpus=num_gpus, max_restarts=3, max_task_retries=3,
        runtime_env={"env_vars": {"C2P_WORKER_ROLE": "imgfeat"}},
    )
    # No CPU reserved (a 1-CPU node would deadlock: the render task waits on the actor), so on
    # CPU the actor runs one thread beside the render tasks.
    threads = 0 if num_gpus else 1
    actors = [actor_cls.remote(model_name, pretrained, "auto" if num_gpus else "cpu", batch_size, seed, threads) for _ in range(count)]
    ray.get([a.ready.remote() for a in actors])
    return actors
