"""The suite's one table: measured rows with a column per protocol, K-shot rows as mean ± std
over seeds, per-class accuracies, links to the confusion plots, the settings each protocol
used, what was skipped and why, and published numbers as separate, marked reference rows.

Written as ``table.md`` (people), ``table.json`` (everything, for scripts) and ``table.csv``
(one value per line: kind, dataset, row, metric, protocol, value, std, n, source; ``kind`` is
``measured`` or ``published`` so the two never mix in a spreadsheet either). Nothing in them
depends on time or host: the same cells give the same bytes.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from c2p.config.evalsuite import ProtocolConfig, PublishedNumbers

__all__ = ["write_table", "measured_rows", "published_rows"]

METRIC_NAMES = {"top1": "top-1", "top3": "top-3", "top5": "top-5", "mean_class_acc": "mean class acc"}


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}"


def measured_rows(protocols: list[ProtocolConfig], cells: list[dict]) -> list[dict]:
    """One row per (dataset, row label, metric): ``values[protocol] = (value, std, n)`` as
    fractions (std None for zero-shot). Datasets in protocol order of first appearance."""
    by = {(c["protocol"], c["dataset"]): c for c in cells}
    datasets = list(dict.fromkeys(d.name for p in protocols for d in p.datasets))
    metrics = list(dict.fromkeys(m for p in protocols for m in p.metrics))
    rows = []
    for ds in datasets:
        present = [p for p in protocols if (p.name, ds) in by]
        if not present:
            continue
        for m in metrics:
            vals = {p.name: (by[(p.name, ds)]["zeroshot"]["metrics"][m], None, by[(p.name, ds)]["zeroshot"]["metrics"]["n"])
                    for p in present if m in p.metrics}
            rows.append({"dataset": ds, "row": "zero-shot", "metric": m, "values": vals})
        shots = sorted({r["shots"] for p in present for r in (by[(p.name, ds)].get("fewshot") or {}).get("rows", [])})
        for k in shots:
            for m in ("top1", "mean_class_acc"):
                vals = {}
                for p in present:
                    for r in (by[(p.name, ds)].get("fewshot") or {}).get("rows", []):
                        if r["shots"] == k:
                            vals[p.name] = (r[f"{m}_mean"], r[f"{m}_std"], len(r["seeds"]))
                rows.append({"dataset": ds, "row": f"{k}-shot", "metric": m, "values": vals})
    return rows


def published_rows(published: PublishedNumbers) -> list[dict]:
    """One row per (method, dataset, metric): ``values[protocol] = percent``, ``sources``."""
    rows: dict[tuple, dict] = {}
    for n in published.numbers:
        row = rows.setdefault((n.method, n.dataset, n.metric), {"method": n.method, "dataset": n.dataset, "metric": n.metric, "values": {}, "sources": {}})
        row["values"][n.protocol] = n.value
        row["sources"][n.protocol] = n.source + (f" ({n.note})" if n.note else "")
    return list(rows.values())


def _markdown(out: Path, title: str, protocols: list[ProtocolConfig], cells: list[dict], rows: list[dict], pub: list[dict], skipped: list[dict]) -> str:
    names = [p.name for p in protocols]
    head = "| dataset | row | metric | " + " | ".join(names) + " |\n|" + "---|" * (3 + len(names))
    lines = [f"# Evaluation suite: {title}", "", "## Measured (this run)", "",
             "Accuracy in %; K-shot rows: mean ± std over seeds (n = seeds). Columns: protocols (settings below).", "", head]
    for r in rows:
        cells_txt = []
        for p in names:
            v = r["values"].get(p)
            cells_txt.append("—" if v is None else _pct(v[0]) if v[1] is None else f"{_pct(v[0])} ± {_pct(v[1])} (n={v[2]})")
        lines.append(f"| {r['dataset']} | {r['row']} | {METRIC_NAMES[r['metric']]} | " + " | ".join(cells_txt) + " |")
    pub_names = list(dict.fromkeys(names + [p for r in pub for p in r["values"]]))
    lines += ["", "## Published (reference, NOT measured here)", "",
              "Numbers as their papers report them, each with its source; they are not re-run by this suite.", "",
              "| method | dataset | metric | " + " | ".join(pub_names) + " | source |", "|" + "---|" * (4 + len(pub_names))]
    for r in pub:
        vals = " | ".join(f"{r['values'][p]:.2f}" if p in r["values"] else "—" for p in pub_names)
        src = "; ".join(f"{p}: {s}" for p, s in r["sources"].items())
        lines.append(f"| {r['method']} (published) | {r['dataset']} | {METRIC_NAMES[r['metric']]} | {vals} | {src} |")
    lines += ["", "## Protocol settings", "", "| protocol | points | sampling | views | prompts | datasets (reader, axes) |", "|---|---|---|---|---|---|"]
    for p in protocols:
        ds = "; ".join(f"{d.name}: {d.reader}{'/' + d.variant if d.variant else ''}, {d.axis}{f', {d.points} pts' if d.points else ''}" for d in p.datasets)
        lines.append(f"| {p.name} | {p.points} | {p.sampling} | {p.views} | {len(p.templates)} template(s) | {ds} |")
    if skipped:
        lines += ["", "## Skipped", ""] + [f"- {s['protocol']} × {s['dataset']} ({s['reader']}): {s['reason']}" for s in skipped]
    lines += ["", "## Per-class accuracy (zero-shot, %)", ""]
    for ds in dict.fromkeys(c["dataset"] for c in cells):
        have = [c for c in cells if c["dataset"] == ds]
        classes = list(dict.fromkeys(k for c in have for k in c["zeroshot"]["metrics"]["per_class_acc"]))
        lines += [f"### {ds}", "", "| class | " + " | ".join(c["protocol"] for c in have) + " |", "|" + "---|" * (1 + len(have))]
        for k in classes:
            lines.append(f"| {k} | " + " | ".join(_pct(c["zeroshot"]["metrics"]["per_class_acc"].get(k)) for c in have) + " |")
        plots = [f"[{c['protocol']}]({os.path.relpath(c['zeroshot']['report']['confusion'], out)})" for c in have]
        lines += ["", "Confusion matrices: " + ", ".join(plots), ""]
    ids = sorted({(c["zeroshot"]["checkpoint_hash"], c["zeroshot"]["clip_hash"]) for c in cells})
    lines += [f"- depth tower `{a or 'none (CLIP image tower)'}`, CLIP `{b}`" for a, b in ids]
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict], pub: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["kind", "dataset", "row", "metric", "protocol", "value", "std", "n", "source"])
    for r in rows:
        for p, (v, s, n) in r["values"].items():
            w.writerow(["measured", r["dataset"], r["row"], r["metric"], p, f"{100 * v:.4f}", "" if s is None else f"{100 * s:.4f}", n, ""])
    for r in pub:
        for p, v in r["values"].items():
            w.writerow(["published", r["dataset"], r["method"], r["metric"], p, f"{v:.4f}", "", "", r["sources"][p]])
    return buf.getvalue()


def write_table(out: str | Path, protocols: list[ProtocolConfig], cells: list[dict], skipped: list[dict],
                published: PublishedNumbers, title: str = "suite") -> dict:
    """Write ``table.md``, ``table.json`` and ``table.csv`` under ``out``; returns the JSON's dict
    (``measured``, ``published``, ``cells``, ``skipped``, ``report`` paths)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    order = {(p.name, d.name): i for i, (p, d) in enumerate((p, d) for p in protocols for d in p.datasets)}
    cells = sorted(cells, key=lambda c: order.get((c["protocol"], c["dataset"]), len(order)))
    rows, pub = measured_rows(protocols, cells), published_rows(published)
    paths = {"markdown": out / "table.md", "json": out / "table.json", "csv": out / "table.csv"}
    table = {"title": title, "protocols": [p.name for p in protocols], "measured": rows, "published": pub, "cells": cells, "skipped": skipped}
    paths["json"].write_text(json.dumps(table, indent=1, default=str) + "\n")
    paths["markdown"].write_text(_markdown(out, title, protocols, cells, rows, pub, skipped))
    paths["csv"].write_text(_csv(rows, pub))
    return dict(table, report={k: str(v) for k, v in paths.items()})
