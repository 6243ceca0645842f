"""Local stage folders of outputs bound for object storage.

A writer that must never show part of a file in a bucket (the render job's shards, the pairs
export) writes each file whole in a local folder first, then uploads it as one object
(:func:`c2p.storage.put_file`: one PUT, or a multipart upload whose completion is its last
request), so an object appears only when complete.

The stage of an output address lives under ``$C2P_STAGE_DIR`` (default ``~/.cache/c2p/stage``),
one folder per address, named by a hash of it: the same path on every node, so a worker on
another node stages under the same path on its own disk.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

__all__ = ["STAGE_ENV", "stage_dir", "fresh_stage"]

STAGE_ENV = "C2P_STAGE_DIR"


def stage_dir(url: str) -> Path:
    """The local stage of output ``url`` (the same path on every node); not created here."""
    base = Path(os.environ.get(STAGE_ENV) or Path.home() / ".cache" / "c2p" / "stage").expanduser()
    return base / hashlib.sha256(url.encode()).hexdigest()[:16]


def fresh_stage(url: str) -> Path:
    """:func:`stage_dir` of ``url``, emptied (what an earlier, interrupted run left is dropped) and created."""
    stage = stage_dir(url)
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    return stage
