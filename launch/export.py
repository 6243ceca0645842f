"""Export the depth tower of a pre-training run as one fp32 safetensors file (no DeepSpeed needed

    python launch/export.py runs/tiny                       # newest committed checkpoint → runs/tiny/export/
    python launch/export.py runs/tiny --tag step_00000020 --out /tmp/tower
    python launch/export.py runs/vitb32 --cluster slurm --partition cpu --mem 64G   # big runs: on a node

The same command is installed as ``c2p-export``; everything it does is in :mod:`c2p.cli.export`
(``--help`` lists every flag and config key).
"""

import sys

from c2p.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
