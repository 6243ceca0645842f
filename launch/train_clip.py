"""Train a small CLIP on image-text pair shards with open_clip's own trainer (``open_clip_train``).

    python launch/train_clip.py --shards runs/demo/shards/train --out runs/demo/clip \\
        --model c2p-small --epochs 6 --batch-size 64

The same command is installed as ``c2p-train-clip``; everything it does is in :mod:`c2p.cli.train_clip`
(``--help`` lists every flag and config key).
"""

import sys

from c2p.cli.train_clip import main

if __name__ == "__main__":
    sys.exit(main())
