"""The write side of the data: a Ray job that renders a corpus into WebDataset shards.

| module      | concept                                                                    |
|-------------|----------------------------------------------------------------------------|
| ``plan``    | deterministic plan (objects → shards in generations), render settings       |
| ``record``  | ``plan.json`` and the generations' uid lists: what owns an output directory |
| ``objects`` | one object: load, sample points, render RGB views and depth, encode        |
| ``limits``  | per-object time and size limits: a pathological mesh becomes an error record |
| ``sink``    | the writer thread: encode and write while the next object renders          |
| ``task``    | one shard: its objects into a tar and a ``parts/`` record (plain function) |
| ``faults``  | injected worker deaths (``C2P_FAULT_INJECT``): retries must come out whole |
| ``features``| frozen image-tower features (``imgfeat.<tag>.npy``) held by Ray actors      |
| ``raytasks``| the shard tasks on Ray: retries, concurrency, progress                     |
| ``output``  | the output directory: claim it, find complete shards, write ``index.json``  |
| ``job``     | the driver: plan, output, tasks, previews, summary                         |
| ``preview`` | ``previews/`` contact sheets read back from the shards                      |

Every file and folder name of the output directory comes from :mod:`c2p.sharddir`, which
the readers of shards share. Entry point for people: ``c2p-render --corpus NAME --root DIR --out DIR``
(``launch/render.py``).
"""

from c2p.shards.job import format_summary, run_render_job
from c2p.shards.plan import RenderPlan, ShardSpec, make_plan, object_seed, render_settings
from c2p.shards.record import PlanMismatch

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
