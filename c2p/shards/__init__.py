"""The write side of the data: a Ray job that renders a corpus into WebDataset shards.

| module      | concept                                                                 |
|-------------|-------------------------------------------------------------------------|
| ``plan``    | deterministic plan (objects → shards), render settings, ``plan.json``    |
| ``task``    | one shard: load, sample points, render, encode, write (plain function)  |
| ``features``| frozen image-tower features (``imgfeat.<tag>.npy``) held by Ray actors  |
| ``job``     | the driver: resume, Ray tasks, progress, ``index.json``, summary        |
| ``preview`` | ``previews/`` contact sheets read back from the shards                   |

Entry point for people: ``python launch/render.py --corpus NAME --root DIR --out DIR``.
"""

from c2p.shards.job import format_summary, run_render_job
from c2p.shards.plan import PlanMismatch, RenderPlan, ShardSpec, make_plan, object_seed, render_settings

__all__ = [
    "PlanMismatch",
    "RenderPlan",
    "ShardSpec",
    "format_summary",
    "make_plan",
    "object_seed",
    "render_settings",
    "run_render_job",
]
