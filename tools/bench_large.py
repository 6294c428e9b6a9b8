"""Large-model benchmark: peak memory and throughput of `onnxjpq compress` on a model over 2 GB.

    python tools/bench_large.py                      # 2.2 GB of float32 weights in a temporary folder
    python tools/bench_large.py --size-gb 0.2        # a quick run
    python tools/bench_large.py --workdir /data/tmp --keep

Generates a chain of square MatMul layers (float32, a seeded Laplace draw, each
with a small bias Add) saved with external data, written chunk by chunk so the
generation needs no more than a few MB. Then runs, each in its own subprocess
so the peak resident set (ru_maxrss from wait4) is per run:

- floor: `onnx.load` + `onnx.save` of the same model (external data), what any
  tool that loads the model pays;
- onnxjpq: `python -m onnxjpq compress model.onnx -o out.onnx` with default
  options and with `--rate 16` (both stream: the model keeps its weights in external data).

The table gives peak RSS against the weight bytes, the acceptance allowance
(1.5 x weight bytes + 200 MB), seconds and weights per second, and both runs'
ratios to the floor. With `--check`, exit status 1 if onnxjpq's peak exceeds the
allowance (meaningful from about 1 GB: the imports alone take about 300 MB).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

MB = 1 << 20
_CHUNK = 1 << 22  # values per generated chunk (16 MB of float32)
_ALIGN = 4096

FLOOR = """
import sys, onnx
src, dst = sys.argv[1], sys.argv[2]
model = onnx.load(src)
onnx.save_model(model, dst, save_as_external_data=True, all_tensors_to_one_file=True,
                location=dst.rsplit("/", 1)[-1] + ".data")
"""


def _layout(size_bytes: int, width: int) -> tuple[int, int]:
    """(width, layers): square float32 layers of at most `width`, at least 4 of them."""
    while width > 64 and size_bytes / (4 * width * width) < 4:
        width //= 2
    return width, max(1, -(-size_bytes // (4 * width * width)))


def _external(name: str, dims: list[int], location: str, offset: int, length: int) -> TensorProto:
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims)
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)
    tensor.data_location = TensorProto.EXTERNAL
    return tensor


def _write(f, rng: np.random.Generator, count: int, scale: float) -> tuple[int, int]:
    """Append `count` Laplace float32 values at an aligned offset; return (offset, length)."""
    pad = -f.tell() % _ALIGN
    f.write(bytes(pad))
    offset, left = f.tell(), count
    while left:
        n = min(left, _CHUNK)
        f.write(rng.laplace(0.0, scale, n).astype(np.float32).tobytes())
        left -= n
    return offset, 4 * count


def generate(folder: Path, size_gb: float, width: int, seed: int) -> tuple[Path, int, int]:
    """Write `folder/big.onnx` + `big.onnx.data`; return (path, weight bytes, weights)."""
    width, layers = _layout(int(size_gb * 1e9), width)
    path, location = folder / "big.onnx", "big.onnx.data"
    initializers, nodes, previous = [], [], "x"
    with open(folder / location, "wb") as f:
        for i in range(layers):
            rng = np.random.default_rng(seed + i)
            w = _external(f"W{i}", [width, width], location,
                          *_write(f, rng, width * width, 1.0 / width))
            b = _external(f"b{i}", [width], location, *_write(f, rng, width, 0.01))
            initializers += [w, b]
            nodes += [helper.make_node("MatMul", [previous, f"W{i}"], [f"h{i}"], name=f"matmul{i}"),
                      helper.make_node("Add", [f"h{i}", f"b{i}"], [f"y{i}"], name=f"add{i}")]
            previous = f"y{i}"
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [1, width])],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save_model(model, str(path))
    weights = layers * width * width
    return path, 4 * weights, weights


def measure(args: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS bytes of one subprocess (wait4: this child only)."""
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a full pipe would block the child
        start = time.perf_counter()
        proc = subprocess.Popen(args, stdout=log, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            log.seek(0)
            output = log.read().decode(errors="replace")
            raise SystemExit(f"{' '.join(args[:4])}... failed ({proc.returncode}):\n{output[-2000:]}")
    return seconds, usage.ru_maxrss * 1024


def _table(weight_bytes: int, weights: int, runs: dict[str, tuple[float, int]]) -> tuple[str, bool]:
    allowance = 1.5 * weight_bytes + 200 * MB
    floor_s, floor_rss = runs["floor (onnx.load+save)"]
    head = ("run", "weight MB", "peak RSS MB", "RSS/weights", "allowance MB", "met", "seconds",
            "Mweights/s", "MB/s", "RSS vs floor", "time vs floor")
    rows, met_all = [], True
    for name, (seconds, rss) in runs.items():
        met = rss <= allowance
        met_all &= met or name.startswith("floor")
        rows.append((name, f"{weight_bytes / MB:,.0f}", f"{rss / MB:,.0f}", f"{rss / weight_bytes:.2f}",
                     f"{allowance / MB:,.0f}", "yes" if met else "NO", f"{seconds:.1f}",
                     f"{weights / seconds / 1e6:.1f}", f"{weight_bytes / MB / seconds:.0f}",
                     f"{rss / floor_rss:.2f}", f"{seconds / floor_s:.2f}"))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(head, widths)),
             "-|-".join("-" * w for w in widths)]
    lines += [" | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
              for r in rows]
    return "\n".join(lines), met_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=2.2, help="weight bytes to generate, in GB (1e9)")
    parser.add_argument("--width", type=int, default=4096, help="largest layer width (layers are width x width)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="folder for the model and outputs (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the generated model and outputs")
    parser.add_argument("--check", action="store_true", help="exit 1 if onnxjpq exceeds the allowance")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="onnxjpq-bench-", dir=args.workdir))
    try:
        start = time.perf_counter()
        path, weight_bytes, weights = generate(workdir, args.size_gb, args.width, args.seed)
        print(f"model: {path} ({weights:,} weights, {weight_bytes / MB:,.0f} MB of float32 weights, "
              f"generated in {time.perf_counter() - start:.1f} s)", flush=True)
        runs = {
            "floor (onnx.load+save)": measure([sys.executable, "-c", FLOOR, str(path), str(workdir / "floor.onnx")]),
            "onnxjpq compress": measure([sys.executable, "-m", "onnxjpq", "compress", str(path),
                                         "-o", str(workdir / "small.onnx")]),
            "onnxjpq compress --rate 16": measure([sys.executable, "-m", "onnxjpq", "compress", str(path),
                                                   "-o", str(workdir / "rate16.onnx"), "--rate", "16"]),
        }
        onnx.checker.check_model(str(workdir / "small.onnx"))
        onnx.checker.check_model(str(workdir / "rate16.onnx"))
        out_bytes = sum(p.stat().st_size for p in workdir.glob("small.onnx*"))
        table, met = _table(weight_bytes, weights, runs)
        print(table)
        print(f"onnxjpq output: {out_bytes / MB:,.0f} MB (model + external data); "
              f"allowance {'met' if met else 'NOT met'}")
        return 1 if args.check and not met else 0
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
