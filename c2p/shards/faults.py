"""Injected worker deaths, to prove that a shard killed mid-write is retried and comes out whole.

The driver reads ``C2P_FAULT_INJECT`` once and hands the spec to every shard task; the task
of the named shard kills its own process after writing a given number of samples. Empty (the
default) injects nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from c2p.sharddir import ShardDir

FAULT_ENV = "C2P_FAULT_INJECT"


def parse_fault(spec: str) -> dict[str, Any] | None:
    """``C2P_FAULT_INJECT="shard=K[,after=N][,marker=PATH]"`` → dict, or None when empty.

    The task of shard K kills its own process (``os._exit``) after writing N samples
    (default 1, so a half-written ``.tmp`` is left behind) — only on the first attempt, known
    by the marker file it creates before dying (default: :meth:`ShardDir.fault_marker`).
    """
    if not spec:
        return None
    out: dict[str, Any] = {"after": 1, "marker": ""}
    for item in spec.split(","):
        k, _, v = item.partition("=")
        if k not in ("shard", "after", "marker") or not v:
            raise ValueError(f"{FAULT_ENV}={spec!r}: bad item {item!r}; expected shard=K[,after=N][,marker=PATH]")
        out[k] = v if k == "marker" else int(v)
    if "shard" not in out:
        raise ValueError(f"{FAULT_ENV}={spec!r}: no shard=K")
    return out


def die_if_due(fault: dict[str, Any] | None, shard: int, written: int, out: str | Path) -> None:
    """Kill this process (exit status 17) when ``fault`` (from :func:`parse_fault`) names shard
    ``shard``, ``written`` samples are in its tar, and its marker does not exist yet."""
    if not fault or fault["shard"] != shard or written != fault["after"]:
        return
    marker = Path(fault["marker"] or ShardDir(out).fault_marker(shard))
    if marker.exists():
        return
    marker.write_text(f"killed pid {os.getpid()} after {written} samples\n")
    os._exit(17)
