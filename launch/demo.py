"""The end-to-end demo: the paper's table in miniature, on one CPU machine, in minutes.

    python launch/demo.py                       # configs/demo/demo.yaml
    python launch/demo.py run.name=demo2 pretrain.steps=60 ...
    python launch/demo.py --stages world,render # some stages only

The same command is installed as ``c2p-demo``; everything it does is in :mod:`c2p.cli.demo`
and :mod:`c2p.demo` (``--help`` lists every flag and config key). From here the default
config is the one of this checkout, whatever the working directory.
"""

import sys
from pathlib import Path

from c2p.cli.demo import main

if __name__ == "__main__":
    sys.exit(main(default_config=Path(__file__).resolve().parents[1] / "configs" / "demo" / "demo.yaml"))
