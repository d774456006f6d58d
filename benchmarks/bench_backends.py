"""Phase-2 fine-tuning speed of the detector on each Keras backend (TensorFlow, JAX, PyTorch) on this CPU (issue 22).

One training step of phase 2 (``model.fit``'s own ``train_on_batch``: forward, backward, Adam update) at 224 px,
batch 32, float32, for:

* ``efficientnet_lite0`` and ``efficientnet_lite1``: the shipped ``general`` / ``dfdc_faces`` fine-tune settings
  (multi-stage pooling, head [256], ``fine_tune_stages`` 8 = the whole backbone, depthwise kernels frozen,
  BatchNorm frozen; both configs fine-tune alike, ``--config`` says which one is read);
* ``resnet50``: the same recipe with its backbone swapped and ``fine_tune_stages`` 1 (conv5 alone).

A model is ``NAME`` or ``NAME:STAGES`` (e.g. ``efficientnet_lite0:3``, staged unfreezing's first epochs). Each
(model, backend) runs in a fresh subprocess with ``KERAS_BACKEND`` set in its environment and deepfake's own CPU
defaults (``deepfake.precision.backend_defaults``: oneDNN on, one inter-op thread, read by TensorFlow only) and XLA
choice (``train.jit_compile=auto`` = ``deepfake.backend.jit_default``: JAX compiled, TensorFlow and PyTorch not).
Every backend trains on the same seeded synthetic pixels and labels (NumPy arrays passed to ``train_on_batch``,
no input pipeline) from the same initial weights (random init built once per model, saved as a ``.weights.h5``
file and loaded by every backend), so the first losses agree and only training is timed. The first ``--warmup``
steps (tracing, XLA compilation, allocator warm-up) are timed apart as start-up seconds. The three backends of one
model run one after another, so they see about the same load on a shared machine; CPU seconds of the process
(every thread) are the steadier measure there.

Work per image: the forward pass's multiply-adds of the convolutions and dense layers counted from the Keras
graph (``common.gmacs``' rules), 2 FLOP each. ``train GFLOP (3x)`` is the usual 3x forward (forward, input
gradients, weight gradients of every layer); ``train GFLOP (est.)`` counts what this step needs: the forward pass,
input gradients of the layers after the first trainable one, weight gradients of the trainable layers only (frozen
depthwise kernels, ResNet50's frozen conv1-conv4 have none). The peak it is set against is a float32 NumPy matrix
product measured at the start (``--no-peak`` to skip; README's ``bench_peak.py`` measured TensorFlow at 131
GMAC/s on the AVX-512 EPYC).

    nice -n 5 .venv/bin/python benchmarks/bench_backends.py [--backends tensorflow jax torch]
        [--models efficientnet_lite0 efficientnet_lite1 resnet50] [--steps 10] [--warmup 2] [--jit auto] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import common
from common import machine

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("tensorflow", "jax", "torch")
MODELS = ("efficientnet_lite0", "efficientnet_lite1", "resnet50")
DEFAULT_STAGES = {"resnet50": 1}  # the EfficientNets: the config's fine_tune_stages (8)
VERSIONS = ("keras", "tensorflow-cpu", "tensorflow", "jax", "jaxlib", "torch", "numpy", "h5py")

CHILD = r"""
import json, os, sys, time
o = json.loads(sys.argv[1])
t0 = time.perf_counter()
from deepfake import precision as P
P.backend_defaults()  # what the deepfake command line sets before Keras loads (TensorFlow reads them)
import numpy as np
import keras
from deepfake import backend as BK, config as C, model as M, training as T
name = BK.current()
assert name == os.environ["KERAS_BACKEND"], (name, os.environ["KERAS_BACKEND"])
cfg = C.resolve(config_files=[o["config"]], set_args=[
    f"model.backbone={o['model']}", "model.weights=none", "train.mixed_precision=off", f"train.jit_compile={o['jit']}",
    f"data.image_size={o['size']}", f"data.batch_size={o['batch']}",
    *([f"train.fine_tune_stages={o['stages']}", f"train.fine_tune_warmup_stages={min(o['stages'], 3) - 1}"]
      if o["stages"] is not None else [])])
stages = o["stages"] if o["stages"] is not None else cfg.train.fine_tune_stages
depthwise = cfg.train.fine_tune_depthwise
T.set_seeds(cfg.train.seed)
runtime = P.configure_runtime(cfg)
model = M.build_model(cfg)
weights = o["weights_file"]
if os.path.exists(weights):
    model.load_weights(weights)
    init = "loaded"
else:
    model.save_weights(weights)
    init = "built here"
trainable_layers = M.set_fine_tune(model, stages, depthwise=depthwise)
T.compile_model(model, cfg.train.fine_tune_learning_rate, runtime["jit_compile"])
build_s = time.perf_counter() - t0

# Work per image: per layer forward multiply-adds (common.gmacs' rules), in topological order, trainable or not.
def layer_macs(m, out, frozen=False):
    for layer in m.layers:
        off = frozen or not layer.trainable
        if isinstance(layer, keras.Model):
            layer_macs(layer, out, off)
            continue
        kind = type(layer).__name__
        macs = 0
        if kind in ("Conv2D", "DepthwiseConv2D"):
            h, w, c_out = layer.output.shape[1:]
            k = int(np.prod(layer.kernel_size))
            per_pixel = layer.input.shape[-1] * c_out // layer.groups if kind == "Conv2D" else c_out
            macs = h * w * k * per_pixel
        elif kind == "Dense":
            macs = layer.input.shape[-1] * layer.units
        if macs:
            out.append((macs, not off and bool(layer.trainable_weights)))
    return out
macs = layer_macs(model, [])
forward = sum(m for m, _ in macs)
first = next((i for i, (_, t) in enumerate(macs) if t), len(macs))
backward = sum(m for i, (m, _) in enumerate(macs) if i > first) + sum(m for m, t in macs if t)

rng = np.random.default_rng(o["seed"])
shape = (o["batch"], o["size"], o["size"], 3)
xs = [rng.integers(0, 256, shape).astype("float32") for _ in range(o["pool"])]
ys = [rng.integers(0, 2, (o["batch"], 1)).astype("float32") for _ in range(o["pool"])]

def loss_of(r):
    return float(np.asarray(r[0] if isinstance(r, (list, tuple)) else r))

losses, warm = [], []
for i in range(o["warmup"]):
    s = time.perf_counter()
    losses.append(loss_of(model.train_on_batch(xs[i % o["pool"]], ys[i % o["pool"]])))
    warm.append(time.perf_counter() - s)
load_before = os.getloadavg()[0]
start, cpu = time.perf_counter(), time.process_time()
for i in range(o["warmup"], o["warmup"] + o["steps"]):
    r = model.train_on_batch(xs[i % o["pool"]], ys[i % o["pool"]])
    losses.append(loss_of(r))  # a host read: the step has finished (JAX, PyTorch dispatch asynchronously)
wall, cpu = time.perf_counter() - start, time.process_time() - cpu
threads = BK.settings(name)
if name == "torch":
    import torch
    threads["torch_threads"] = f"{torch.get_num_threads()} intra / {torch.get_num_interop_threads()} inter"
elif name == "jax":
    import jax
    threads["jax_devices"] = ", ".join(str(d) for d in jax.devices())
print("RESULT " + json.dumps({
    "backend": name, "backend_version": BK.version(name), "keras_version": keras.__version__,
    "jit_compile": runtime["jit_compile"], "precision": runtime["precision_policy"], "stages": stages,
    "depthwise_trainable": depthwise, "trainable_layers": trainable_layers, "init": init,
    "build_s": build_s, "warmup_step_s": warm, "wall_s": wall, "cpu_s": cpu,
    "load1_before": load_before, "load1_after": os.getloadavg()[0],
    "forward_gmacs": forward / 1e9, "train_gmacs_est": (forward + backward) / 1e9,
    "losses": losses, "finite": bool(np.all(np.isfinite(losses))), "threads": threads}))
"""


def versions() -> dict[str, str]:
    found = {}
    for name in VERSIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def numpy_peak(seconds: float = 3.0, n: int = 2048) -> float:
    """Best float32 matrix-product rate of NumPy's BLAS on this machine, GMAC/s (every core)."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = a.T.copy()
    a @ b
    best, stop = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < stop:
        s = time.perf_counter()
        a @ b
        best = max(best, n**3 / (time.perf_counter() - s) / 1e9)
    return best


def child_env(backend: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    return {**env, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def run_one(backend: str, model: str, stages: int | None, args, weights_file: Path) -> dict:
    opts = {"model": model, "stages": stages, "config": args.config, "size": args.size, "batch": args.batch,
            "steps": args.steps, "warmup": args.warmup, "seed": args.seed, "pool": args.pool,
            "weights_file": str(weights_file), "jit": args.jit}
    label = f"{model}:{stages}" if stages is not None else model
    start = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(opts)], capture_output=True, text=True,
                             env=child_env(backend), cwd=REPO, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"backend": backend, "model": label, "error": f"not done in {args.timeout} s"}
    lines = [ln[7:] for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        tail = [ln for ln in out.stderr.strip().splitlines() if ln.strip()] or ["no output"]
        return {"backend": backend, "model": label, "error": tail[-1][:300]}
    r = json.loads(lines[-1])
    r.update(backend=backend, model=label, process_s=time.perf_counter() - start)
    return r


def row_of(r: dict, batch: int, steps: int, peak_gmacs: float | None) -> dict:
    if "error" in r:
        return {"backend": r["backend"], "model": r["model"], "images_per_s": float("nan"), "note": r["error"]}
    images = steps * batch
    ips, ipc = images / r["wall_s"], images / r["cpu_s"]
    est, fwd = 2 * r["train_gmacs_est"], 2 * r["forward_gmacs"]
    row = {
        "backend": r["backend"], "model": r["model"], "version": r["backend_version"],
        "jit": r["jit_compile"], "stages": r["stages"], "depthwise": "trainable" if r["depthwise_trainable"]
        else "frozen", "images_per_s": round(ips, 2), "s_per_step": round(r["wall_s"] / steps, 3),
        "cpu_s_per_image": round(1 / ipc, 4), "images_per_cpu_s": round(ipc, 2),
        "startup_s": round(sum(r["warmup_step_s"]), 1), "first_step_s": round(r["warmup_step_s"][0], 1)
        if r["warmup_step_s"] else float("nan"), "build_s": round(r["build_s"], 1),
        "fwd_gflop_per_img": round(fwd, 3), "train_gflop_3x": round(3 * fwd, 3), "train_gflop_est": round(est, 3),
        "gflop_per_s": round(est * ips, 1), "gflop_per_cpu_s": round(est * ipc, 1),
    }
    if peak_gmacs:
        # share of the machine's measured float32 peak (every core) reached per wall second
        row["share_of_peak"] = f"{100 * est * ips / (2 * peak_gmacs):.0f} %"
    row.update({"loss_first": round(r["losses"][0], 4) if r["losses"] else float("nan"),
                "loss_last": round(r["losses"][-1], 4) if r["losses"] else float("nan"),
                "load1": f"{r['load1_before']:.1f} / {r['load1_after']:.1f}",
                "threads": ", ".join(f"{k} {v}" for k, v in r["threads"].items()),
                "note": ("" if r["finite"] else "NaN loss; ") + f"{r['trainable_layers']} trainable backbone layers, "
                        f"init {r['init']}"})
    return row


def table(rows: list[dict]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
                      *("| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--models", nargs="+", default=list(MODELS),
                        help="NAME or NAME:STAGES (default stages: the config's; resnet50: 1)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per (model, backend)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps (tracing, compilation)")
    parser.add_argument("--config", default="dfdc_faces", help="shipped config whose fine-tune settings are used")
    parser.add_argument("--jit", choices=("auto", "on", "off"), default="auto",
                        help="train.jit_compile (auto: deepfake.backend.jit_default, JAX on, the others off on a CPU)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic pixels and labels")
    parser.add_argument("--pool", type=int, default=4, help="distinct synthetic batches, cycled")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per (model, backend) process")
    parser.add_argument("--no-peak", action="store_true", help="skip the NumPy matrix-product peak")
    parser.add_argument("--out", type=Path, default=common.RESULTS, help="folder for backends.json and .md")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--steps and --warmup must be 1 or more")
    started = time.perf_counter()
    info = machine()
    peak = None if args.no_peak else numpy_peak()
    raw, rows = [], []
    with tempfile.TemporaryDirectory(prefix="bench_backends_") as tmp:
        for spec in args.models:
            model, _, st = spec.partition(":")
            stages = int(st) if st else DEFAULT_STAGES.get(model)
            weights = Path(tmp) / f"{model}.weights.h5"  # one random init per model, shared by every backend
            for backend in args.backends:
                r = run_one(backend, model, stages, args, weights)
                raw.append(r)
                rows.append(row_of(r, args.batch, args.steps, peak))
                print(json.dumps(rows[-1]), flush=True)
    minutes = (time.perf_counter() - started) / 60
    flags = info["cpu_flags"]
    yes = {True: "yes", False: "no"}.get
    cmd = "nice -n 5 .venv/bin/python benchmarks/bench_backends.py " + " ".join(
        f"--{k} {' '.join(v) if isinstance(v, list) else v}" for k, v in
        (("backends", args.backends), ("models", args.models), ("steps", args.steps), ("warmup", args.warmup))) + (
        f" --jit {args.jit}" if args.jit != "auto" else "")
    notes = [
        f"Command: `{cmd}` ({minutes:.0f} min in all). {info['cpu']} (flags: {' '.join(flags) or 'none listed'}; "
        f"AVX-512: {yes('avx512f' in flags)}, AMX: {yes(any(f.startswith('amx') for f in flags))}, "
        f"BF16: {yes(any('bf16' in f for f in flags))}), {info['cores']} cores; "
        + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".",
        f"Phase-2 fine-tuning step, {args.size} px, batch {args.batch}, float32, the `{args.config}` config's "
        "fine-tune settings (stages as listed, depthwise kernels and BatchNorm frozen), random init (the same weights "
        f"on every backend), {args.steps} timed steps after {args.warmup} warm-up steps on the same seeded synthetic "
        f"pixels (NumPy, {args.pool} batches cycled). images_per_s / s_per_step: wall clock of the timed steps; "
        "cpu_s_per_image: CPU seconds of the whole process (every thread) per image; startup_s: the warm-up steps "
        "(first_step_s of it: tracing and, with jit, XLA compilation), build_s: Python imports, model build and "
        f"compile() before them. jit: train.jit_compile={args.jit} (auto: deepfake.backend.jit_default on a CPU).",
        "Work per image: fwd_gflop_per_img = 2 x the multiply-adds of every convolution and dense layer, counted from "
        "the Keras graph; train_gflop_3x = 3 x forward, the usual rule; train_gflop_est = forward + input gradients "
        "of the layers after the first trainable one + weight gradients of the trainable layers (what this step "
        "needs; used for gflop_per_s and gflop_per_cpu_s). "
        + (f"Peak: NumPy's float32 2048x2048 matrix product, best over 3 s at the start: {peak:.0f} GMAC/s = "
           f"{2 * peak:.0f} GFLOP/s on every core (share_of_peak: gflop_per_s against it; "
           "results/peak.md has TensorFlow's 4096x4096 product at 131 GMAC/s on the AVX-512 EPYC)."
           if peak else "Peak not measured (--no-peak)."),
        "load1: the 1-minute load average before and after the timed steps (the machine is shared: compare "
        "images_per_cpu_s when it is above the core count). loss_first / loss_last: the first warm-up and the last "
        "timed step's loss, the same initial weights and batches on every backend.",
    ]
    write(args.out, rows, "\n\n".join(notes), {"raw": raw, "peak_numpy_gmacs": peak, "args": vars(args) | {
        "out": str(args.out)}, "versions": versions()}, info)


def write(folder: Path, rows: list[dict], notes: str, extra: dict, info: dict) -> None:
    """common.write's files (``backends.md`` and ``.json``), in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    head = (f"# backends\n\n{info['date']} · {info['cpu']} ({' '.join(info['cpu_flags'])}) · {info['cores']} cores · "
            + ", ".join(f"{k} {v}" for k, v in versions().items()) + "\n\n")
    text = head + table(rows) + "\n\n" + notes + "\n"
    print(text)
    (folder / "backends.md").write_text(text)
    (folder / "backends.json").write_text(json.dumps({"machine": info, "rows": rows, "notes": notes, **extra},
                                                     indent=2, default=str))


if __name__ == "__main__":
    main()
