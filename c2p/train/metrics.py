"""Training metrics: ``metrics.jsonl`` (one JSON object per logged step), TensorBoard, a progress line.

Only rank 0 writes; the values it writes are already reduced over ranks by the loop.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from c2p.fileio import atomic_write_bytes

log = logging.getLogger("c2p.train")

__all__ = ["MetricsLogger", "truncate_metrics"]


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records with ``step > last_step`` (written by a run that died after its last checkpoint).

    A resumed run re-trains those steps; keeping both copies would make the file ambiguous.
    """
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                keep.append(line)
        except json.JSONDecodeError:  # a line cut by the crash
            continue
    atomic_write_bytes(path, "".join(k + "\n" for k in keep).encode())


class MetricsLogger:
    """Writes ``<run_dir>/metrics.jsonl`` and ``<run_dir>/tb/`` on rank 0; a no-op elsewhere.

    ``log(step, values)`` appends ``{"step": step, "time": unix, **values}``; every number
    also goes to TensorBoard under ``train/<name>``.
    """

    def __init__(self, run_dir: str | Path, rank: int, total_steps: int, tensorboard: bool = True):
        self.enabled = rank == 0
        self.total_steps = total_steps
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", buffering=1)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self._tb = SummaryWriter(str(Path(run_dir) / "tb"))
                except ImportError as e:  # tensorboard is a dependency; say so instead of crashing a long run
                    log.warning("TensorBoard disabled: %s", e)

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(f"train/{k}", v, step)
        log.info(
            "step %d/%d  loss %.4f (cross %.4f intra %.4f)  w %.3f  lr %.2e  top1 %.3f  classes/batch %.1f  %.1f samples/s"
            "  MFU %.2f%%  data-wait %.0f%%  ckpt-stall %.2fs",
            step, self.total_steps, values.get("loss", float("nan")), values.get("loss_cross", float("nan")),
            values.get("loss_intra", float("nan")), values.get("w", float("nan")), values.get("lr", float("nan")),
            values.get("retrieval_top1", float("nan")), values.get("batch_classes", float("nan")),
            values.get("samples_per_s", float("nan")), 100 * values.get("mfu", float("nan")),
            100 * values.get("data_wait_frac", float("nan")), values.get("ckpt_stall_s", float("nan")),
        )

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()
