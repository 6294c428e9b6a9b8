"""Packed-format benchmark: file size, session creation, memory at load and latency against fp32.

    python tools/bench_packed.py                       # one 4096 x 4096 MatMul
    python tools/bench_packed.py --shape 512 1024      # the small case of the decoder tests
    python tools/bench_packed.py --threads 1 --runs 200

Builds one MatMul model with a float32 weight (a seeded Laplace draw) and its
packed versions through `rewrite.packed.apply_packed`: 4-bit and 3-bit codes
(max code 7 and 3, steps that keep the layer dense), and the same with the 50 %
smallest weights pruned. Then measures, each session in its own subprocess:

- file bytes;
- session creation (onnxruntime's default ORT_ENABLE_ALL, which folds the
  decoder): the median wall time of `--creates` subprocesses;
- the peak RSS of session creation above the RSS just before it ("load peak":
  VmHWM, reset through /proc/self/clear_refs, less VmRSS before; Linux), and the
  RSS the session still holds once created ("held": VmRSS after glibc's
  malloc_trim less before, so freed heap is not counted);
  medians over the subprocesses;
- inference latency: the median of `--runs` runs at batch `--batch`, after warm-up.

Ratios are against the fp32 model measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
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

CHILD = """
import ctypes, json, sys, time
import numpy as np, onnxruntime as ort

def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))

mode, path, threads, batch, runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
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
    name, shape = session.get_inputs()[0].name, session.get_inputs()[0].shape
    x = np.random.default_rng(0).standard_normal((batch, shape[1])).astype(np.float32)
    for _ in range(5):
        session.run(None, {name: x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, {name: x})
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
    label = apply_packed(graph, layer, plan)
    return gs.export_onnx(graph), label


def measure(mode: str, path: Path, args) -> dict:
    """One child's measurements."""
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), str(args.threads), str(args.batch),
                           str(args.runs)], check=False, capture_output=True, text=True)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=2, default=(4096, 4096), metavar=("ROWS", "COLS"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--creates", type=int, default=5, help="session-creation subprocesses per model")
    parser.add_argument("--runs", type=int, default=50, help="timed inference runs")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's default)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="onnxjpq-packed-") as folder:
        base = fp32_model(*args.shape, args.seed)
        paths = {"fp32": Path(folder) / "fp32.onnx"}
        onnx.save(base, paths["fp32"])
        for bits, prune in ((4, 0.0), (3, 0.0), (4, 0.5), (3, 0.5)):
            start = time.perf_counter()
            model, label = packed_model(base, bits, prune)
            onnx.checker.check_model(model, full_check=True)
            name = f"{bits}-bit" + (f" {prune:.0%} pruned" if prune else "") + f" ({label})"
            paths[name] = Path(folder) / f"packed{bits}_{int(100 * prune)}.onnx"
            onnx.save(model, paths[name])
            print(f"{name}: packed in {time.perf_counter() - start:.2f} s", flush=True)
        results = {name: bench(path, args) for name, path in paths.items()}
    rows, cols = args.shape
    print(f"MatMul [{rows}, {cols}] float32 ({rows * cols:,} weights), batch {args.batch}, "
          f"threads {args.threads or 'default'}, onnxruntime {_ort_version()}, {os.cpu_count()} CPUs")
    print(table(results))
    return 0


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    sys.exit(main())
