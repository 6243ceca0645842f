"""Zero-shot evaluation of a depth tower (or of CLIP's image tower, the PointCLIP-style baseline).

    python launch/evaluate.py --task zeroshot --config configs/downstream/zeroshot_modelnet40.yaml \\
        --root data/ModelNet40 --depth-tower runs/vitb32/export/depth_tower.safetensors \\
        [--cluster slurm|local] [--gpus-per-node 1 ...] [key=value ...]
    python launch/evaluate.py --task zeroshot --run runs/vitb32 --config ... --root ...   # that run's export; reports in runs/vitb32/eval/

The same command is installed as ``c2p-evaluate``; everything it does is in :mod:`c2p.cli.evaluate`
(``--help`` lists every flag and config key).
"""

import sys

from c2p.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
