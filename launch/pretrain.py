"""CLIP2Point pre-training on SLURM (through submitit) or as local processes.

    python launch/pretrain.py --config configs/pretrain/tiny.yaml --cluster local --tasks-per-node 2
    python launch/pretrain.py --config configs/pretrain/shapenet_vitb32.yaml --cluster slurm \\
        --nodes 4 --gpus-per-node 8 --cpus-per-task 10 --partition gpu --time 48:00:00 [key=value ...]
    python launch/pretrain.py ... --dry-run      # print the sbatch script and the resolved config

The same command is installed as ``c2p-pretrain``; everything it does is in :mod:`c2p.cli.pretrain`
(``--help`` lists every flag and config key).
"""

import sys

from c2p.cli.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
