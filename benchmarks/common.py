"""Shared helpers for the benchmark scripts: machine/version info and result files."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ai-vs-real"


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in ("tensorflow-cpu", "tensorflow", "keras", "onnxruntime", "mlflow", "optuna", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpu": cpu,
            "cores": os.cpu_count(), "python": platform.python_version(), "versions": versions,
            "load_average_at_start": os.getloadavg()}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write(name: str, rows: list[dict], notes: str = "", extra: dict | None = None) -> None:
    """Print a markdown table and save ``results/<name>.md`` and ``.json``."""
    RESULTS.mkdir(exist_ok=True)
    info = machine()
    cols = list(rows[0]) if rows else []
    lines = [f"# {name}", "", f"{info['date']} · {info['cpu']} · {info['cores']} cores · "
             + ", ".join(f"{k} {v}" for k, v in info["versions"].items()), ""]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for r in rows:
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    if notes:
        lines += ["", notes]
    text = "\n".join(lines) + "\n"
    print(text)
    (RESULTS / f"{name}.md").write_text(text)
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": info, "rows": rows, "notes": notes,
                                                      **(extra or {})}, indent=2, default=str))
