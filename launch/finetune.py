"""Few-shot or fully supervised training of the Gated Dual-Path Adapter, one run or a K x seed sweep.

    python launch/finetune.py --task fewshot --shots 16 --seed 0 --config configs/downstream/fewshot_modelnet40.yaml \\
        --root data/ModelNet40 --depth-tower runs/vitb32/export/depth_tower.safetensors
    python launch/finetune.py --task fewshot --shots 1 2 4 8 16 --seed 0 1 2 --cluster slurm ...   # one job array
    python launch/finetune.py --task supervised --seed 0 1 2 ...
    python launch/finetune.py --collect ...      # rebuild the sweep table/plot from finished array elements

The same command is installed as ``c2p-finetune``; everything it does is in :mod:`c2p.cli.finetune`
(``--help`` lists every flag and config key).
"""

import sys

from c2p.cli.finetune import main

if __name__ == "__main__":
    sys.exit(main())
