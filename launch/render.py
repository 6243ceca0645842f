"""Render a corpus into WebDataset shards with Ray.

    python launch/render.py --corpus synthetic --root data/synthetic --out data/shards/synthetic \\
        [--config configs/render/synthetic.yaml] [--address ray://host:10001] [key=value ...]
    python launch/render.py ... --cluster slurm --nodes 4     # a Ray cluster inside one SLURM job

The same command is installed as ``c2p-render``; everything it does is in :mod:`c2p.cli.render`
(``--help`` lists every flag and config key).
"""

import sys

from c2p.cli.render import main

if __name__ == "__main__":
    sys.exit(main())
