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


# The CPU features that decide which precisions run fast (recorded with every result).
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8",
                  "amx_tile")


def cpu_flags() -> list[str]:
    """This CPU's flags among :data:`RELEVANT_FLAGS` (from /proc/cpuinfo)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [f for f in RELEVANT_FLAGS if f in present]
    except OSError:
        pass
    return []


def gmacs(model) -> float:
    """Multiply-accumulates per image of a Keras model's convolutions and dense layers, in billions."""
    import keras
    import numpy as np

    def count(m) -> int:
        total = 0
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                total += count(layer)
                continue
            kind = type(layer).__name__
            if kind in ("Conv2D", "DepthwiseConv2D"):
                h, w, c_out = layer.output.shape[1:]
                k = int(np.prod(layer.kernel_size))
                per_pixel = layer.input.shape[-1] * c_out // layer.groups if kind == "Conv2D" else c_out
                total += h * w * k * per_pixel
            elif kind == "Dense":
                total += layer.input.shape[-1] * layer.units
        return total

    return count(model) / 1e9


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
    for name in ("tensorflow-cpu", "tensorflow", "keras", "onnxruntime", "openvino", "mlflow", "optuna", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpu": cpu,
            "cpu_flags": cpu_flags(), "cores": os.cpu_count(), "python": platform.python_version(),
            "versions": versions,
            "load_average_at_start": os.getloadavg()}


def run_deepfake(args: list[str], cwd: Path) -> tuple[str, float, int, resource.struct_rusage]:
    """Run ``deepfake ARGS`` in a process of its own: (its output, wall seconds, exit code, its own resource
    usage from wait4: peak RSS and CPU time of that process only)."""
    import subprocess
    import sys
    import time

    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", "from deepfake.cli import main; main()", *args], cwd=cwd,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    return output, time.perf_counter() - start, os.waitstatus_to_exitcode(status), usage


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write(name: str, rows: list[dict], notes: str = "", extra: dict | None = None) -> None:
    """Print a markdown table and save ``results/<name>.md`` and ``.json``."""
    RESULTS.mkdir(exist_ok=True)
    info = machine()
    cols = list(rows[0]) if rows else []
    cpu = f"{info['cpu']} ({' '.join(info['cpu_flags'])})"
    lines = [f"# {name}", "", f"{info['date']} · {cpu} · {info['cores']} cores · "
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
