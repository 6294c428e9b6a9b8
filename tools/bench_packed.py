"""Packed-format benchmark: file size, session creation, memory at load and latency against fp32.

    python tools/bench_packed.py                       # one 4096 x 4096 MatMul
    python tools/bench_packed.py --shape 512 1024      # the small case of the decoder tests
    python tools/bench_packed.py --threads 1 --runs 200
    python tools/bench_packed.py --model minilm.onnx --compress "--bits 4 --embeddings"

Builds one MatMul model with a float32 weight (a seeded Laplace draw) and its
packed versions through `rewrite.packed.apply_packed`: 4-bit and 3-bit codes
(max code 7 and 3, steps that keep the layer dense), and the same with the 50 %
smallest weights pruned. With `--model`, the model file as is and its outputs
of `python -m onnxjpq compress MODEL -q --format F <--compress>` for F in packed,
qdq and float. Then measures, each session in its own subprocess:

- file bytes;
- session creation (onnxruntime's default ORT_ENABLE_ALL, which folds the
  decoder): the median wall time of `--creates` subprocesses;
- the peak RSS of session creation above the RSS just before it ("load peak":
  VmHWM, reset through /proc/self/clear_refs, less VmRSS before; Linux), and the
  RSS the session still holds once created ("held": VmRSS after glibc's
  malloc_trim less before, so freed heap is not counted);
  medians over the subprocesses;
- inference latency: the median of `--runs` runs at batch `--batch`, after warm-up,
  on inputs of the session's shapes (symbolic dims: the first `--batch`, the
  others `--seq-len`): float inputs standard normal, integer inputs ids in
  [0, 100), all ones for masks and zeros for token types.

Ratios are against the fp32 model measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper

MB = 1 << 20
FORMATS = ("packed", "qdq", "float")  # the rows of --model, after fp32

CHILD = """
import ctypes, json, sys, time
import numpy as np, onnxruntime as ort

def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))

DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
          "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}

def feed(arg, rng):  # symbolic dims: batch (the first) or seq_len; masks all ones, token types 0
    shape = [d if isinstance(d, int) else batch if i == 0 else seq_len for i, d in enumerate(arg.shape)]
    dtype = DTYPES.get(arg.type, np.float32)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if "mask" in arg.name:
        return np.ones(shape, dtype)
    if "type" in arg.name:
        return np.zeros(shape, dtype)
    return rng.integers(0, 100, shape).astype(dtype)  # small ids: rows of any vocabulary of 100 or more

mode, path = sys.argv[1], sys.argv[2]
threads, batch, runs, seq_len = map(int, sys.argv[3:7])
options = ort.SessionOptions()
options.log_severity_level = 3
if threads:
    options.intra_op_num_threads = threads
with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM, the peak RSS, to the RSS now
    f.write("5")
before = status("VmRSS")
start = time.perf_counter()
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
created_s, peak = time.perf_counter() - start, status("VmHWM") - before
try:  # hand freed heap back to the OS, so "held" is what the session keeps alive (glibc)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
except OSError:
    pass
out = {"create_s": created_s, "peak_bytes": peak, "held_bytes": status("VmRSS") - before}

if mode == "run":
    rng = np.random.default_rng(0)
    feeds = {arg.name: feed(arg, rng) for arg in session.get_inputs()}
    for _ in range(5):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t)
    out["latency_s"] = sorted(times)[len(times) // 2]
print(json.dumps(out))
"""


def fp32_model(rows: int, cols: int, seed: int) -> onnx.ModelProto:
    """y = MatMul(x, W) with W [rows, cols] float32 (Laplace, scale 1/rows), opset 18."""
    weight = np.random.default_rng(seed).laplace(0.0, 1.0 / rows, (rows, cols)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul")], "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", cols])],
        [onnx.numpy_helper.from_array(weight, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def packed_model(model: onnx.ModelProto, bits: int, prune: float) -> tuple[onnx.ModelProto, str]:
    """`model` with its weight packed at `bits` (max code 2^(bits-1)-1), `prune` of it pruned."""
    from onnxjpq.core.plan import LayerPlan
    from onnxjpq.graph.layers import Selection, find_layers
    from onnxjpq.rewrite.packed import apply_packed

    graph = gs.import_onnx(model)
    layer = find_layers(graph, Selection(keep=()))[0][0]
    magnitude = np.abs(layer.values)
    mask = magnitude >= np.quantile(magnitude, prune) if prune else np.ones(magnitude.shape, bool)
    max_code = (1 << (bits - 1)) - 1
    # a step with few zeros: 3 sigma of the kept weights spans the codes, so the layer stays dense
    step = 3.0 * float(magnitude[mask].std()) / max_code
    plan = LayerPlan(layer.name, mask, step, max_code=max_code)
    (label,) = apply_packed(graph, [(layer, plan)])
    return gs.export_onnx(graph), label


def measure(mode: str, path: Path, args) -> dict:
    """One child's measurements."""
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), str(args.threads), str(args.batch),
                           str(args.runs), str(args.seq_len)], check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} {path} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench(path: Path, args) -> dict:
    creates = [measure("create", path, args) for _ in range(args.creates)]
    return {"bytes": path.stat().st_size,
            **{key: statistics.median(c[key] for c in creates) for key in ("create_s", "peak_bytes", "held_bytes")},
            "latency_s": measure("run", path, args)["latency_s"]}


def table(results: dict[str, dict]) -> str:
    ref = results["fp32"]
    head = ("model", "file bytes", "x smaller", "create ms", "x fp32", "load peak MB", "x fp32",
            "held MB", "latency ms", "x fp32")
    rows = []
    for name, r in results.items():
        rows.append((name, f"{r['bytes']:,}", f"{ref['bytes'] / r['bytes']:.2f}",
                     f"{1e3 * r['create_s']:.1f}", f"{r['create_s'] / ref['create_s']:.2f}",
                     f"{r['peak_bytes'] / MB:.1f}", f"{r['peak_bytes'] / ref['peak_bytes']:.2f}",
                     f"{r['held_bytes'] / MB:.1f}", f"{1e3 * r['latency_s']:.3f}",
                     f"{r['latency_s'] / ref['latency_s']:.2f}"))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(head, widths)), "-|-".join("-" * w for w in widths)]
    lines += [" | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
              for r in rows]
    return "\n".join(lines)


def synthetic(folder: Path, args) -> tuple[dict[str, Path], str]:
    """The MatMul model and its packed versions, written in `folder`; and the table's title."""
    base = fp32_model(*args.shape, args.seed)
    paths = {"fp32": folder / "fp32.onnx"}
    onnx.save(base, paths["fp32"])
    for bits, prune in ((4, 0.0), (3, 0.0), (4, 0.5), (3, 0.5)):
        start = time.perf_counter()
        model, label = packed_model(base, bits, prune)
        onnx.checker.check_model(model, full_check=True)
        name = f"{bits}-bit" + (f" {prune:.0%} pruned" if prune else "") + f" ({label})"
        paths[name] = folder / f"packed{bits}_{int(100 * prune)}.onnx"
        onnx.save(model, paths[name])
        print(f"{name}: packed in {time.perf_counter() - start:.2f} s", flush=True)
    rows, cols = args.shape
    return paths, f"MatMul [{rows}, {cols}] float32 ({rows * cols:,} weights), batch {args.batch}"


def compressed(folder: Path, args) -> tuple[dict[str, Path], str]:
    """`--model` as is and through the CLI in each format with `--compress`; and the table's title."""
    paths = {"fp32": args.model}
    for fmt in FORMATS:
        out = folder / f"{fmt}.onnx"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "onnxjpq", "compress", str(args.model), "-o", str(out), "-q",
                        "--format", fmt, *shlex.split(args.compress)], check=True)
        paths[fmt] = out
        print(f"{fmt}: compressed in {time.perf_counter() - start:.1f} s", flush=True)
    return paths, (f"{args.model.name} compressed with {args.compress!r}, batch {args.batch}, "
                   f"seq-len {args.seq_len}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=2, default=(4096, 4096), metavar=("ROWS", "COLS"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, help="benchmark this fp32 model and its compressed versions instead")
    parser.add_argument("--compress", default="--bits 4", help="with --model: the compress options, one string")
    parser.add_argument("--seq-len", type=int, default=128, help="symbolic input dims after the first (batch)")
    parser.add_argument("--creates", type=int, default=5, help="session-creation subprocesses per model")
    parser.add_argument("--runs", type=int, default=50, help="timed inference runs")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="onnxjpq-packed-") as folder:
        paths, title = (compressed if args.model else synthetic)(Path(folder), args)
        results = {name: bench(path, args) for name, path in paths.items()}
    print(f"{title}, threads {args.threads or 'default'}, onnxruntime {_ort_version()}, {os.cpu_count()} CPUs")
    print(table(results))
    return 0


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    sys.exit(main())
