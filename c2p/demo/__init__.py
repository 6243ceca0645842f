"""The end-to-end demo: the paper's table in miniature, on one CPU machine, in minutes.

No ShapeNet and no CLIP weights exist here, so the demo makes its own world and runs every
stage through the same commands a user runs on a cluster (``python -m c2p.cli.<name>``):

1. ``world``     a synthetic corpus (:mod:`c2p.corpora.synthetic`), train and held-out splits;
2. ``render``    Ray job → WebDataset shards with RGB views and captions (``c2p.cli.render``);
3. ``clip``      a small CLIP trained on those renders and captions by open_clip's own trainer
                 (``c2p.cli.train_clip`` → open_clip_train);
4. ``pretrain``  CLIP2Point pre-training with DeepSpeed on 2 local ranks from that CLIP
                 (``c2p.cli.pretrain --cluster local``), and the paper's ablation without the
                 intra-modality term;
5. ``zeroshot``  held-out zero-shot top-1: CLIP's image tower on depth maps (PointCLIP-style
                 baseline), the CLIP2Point depth tower, the ablation (``c2p.cli.evaluate``);
6. ``fewshot``   K-shot GDPA vs either path alone, over seeds (``c2p.cli.finetune``);
7. ``retrieval`` held-out depth→image retrieval top-1 before and after pre-training;
8. ``report``    ``<run>/report.md`` with the table, the claims checked, and plots.

    plan = load_demo("configs/demo/demo.yaml", ["pretrain.steps=60"])   # every config built and checked
    run_demo(plan, select_stages(None))                                  # then the run directory is written

:mod:`.settings` builds the stages' configs, :mod:`.stages` runs them, :mod:`.report` turns
the results into the table, the claims and the plots.
"""

from c2p.demo.report import Claim, check_claims, plot_report, render_report
from c2p.demo.settings import DemoPlan, load_demo, plan_demo
from c2p.demo.stages import STAGE_NAMES, STAGES, Stage, StageFailed, run_demo, select_stages

__all__ = [
    "Claim", "DemoPlan", "STAGES", "STAGE_NAMES", "Stage", "StageFailed",
    "check_claims", "load_demo", "plan_demo", "plot_report", "render_report", "run_demo", "select_stages",
]
