"""One self-contained HTML page for a run: metrics, tables and every figure (embedded)."""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path
from typing import Any

SECTION_ORDER = ("metrics", "per_source", "robustness", "confusion", "roc", "pr", "reliability", "training")


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if f != f:
        return "n/a"
    return f"{f:.4f}" if not f.is_integer() else str(int(f))


def _rank(path: Path) -> tuple[int, str]:
    name = path.name
    for i, key in enumerate(SECTION_ORDER):
        if key in name:
            return i, name
    return len(SECTION_ORDER), name


def build_report(folder: str | Path, out_path: str | Path, title: str, metrics: dict[str, float],
                 params: dict[str, str] | None = None, tags: dict[str, str] | None = None) -> Path:
    """Write ``out_path``: metrics, every CSV below ``folder`` as a table, every PNG embedded."""
    folder = Path(folder)
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if tags:
        shown = {k: v for k, v in tags.items() if k.startswith(("model_uri", "weights.", "warning.", "registered"))}
        if shown:
            parts.append("<h2>Run</h2>" + _table([{"tag": k, "value": v} for k, v in sorted(shown.items())]))
    if metrics:
        parts.append("<h2>Metrics</h2>" + _table([{"metric": k, "value": v} for k, v in sorted(metrics.items())]))
    for csv_path in sorted(folder.rglob("*.csv"), key=_rank):
        with csv_path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        parts.append(f"<h2>{html.escape(csv_path.stem.replace('_', ' '))}</h2>" + _table(rows))
    for json_path in sorted(folder.rglob("*classification_report.json"), key=_rank):
        report = json.loads(json_path.read_text())
        rows = [{"class": k, **v} for k, v in report.items() if isinstance(v, dict)]
        parts.append(f"<h2>{html.escape(json_path.stem.replace('_', ' '))}</h2>" + _table(rows))
    figures = sorted(folder.rglob("*.png"), key=_rank)
    if figures:
        parts.append("<h2>Figures</h2>")
        for png in figures:
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(png.stem)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{html.escape(png.stem.replace('_', ' '))}</figcaption></figure>")
    if params:
        parts.append("<h2>Configuration</h2>" + _table([{"param": k, "value": v} for k, v in sorted(params.items())]))
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}"
             "th{background:#f3f3f3}figure{display:inline-block;margin:8px;vertical-align:top}"
             "img{max-width:520px;border:1px solid #ddd}figcaption{font-size:12px;color:#555}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return out
