"""What data-aware compression costs: seconds and peak memory of all-MiniLM-L6-v2 (issue 11, item 6).

    python tools/bench_calib_cost.py [--sentences 32,128,512] [--options="--rate 8"]
                                     [--out docs/benchmarks_calib_cost.md]

Each row is one `onnxjpq compress` in its own process (wall seconds, peak RSS: the
process's VmHWM), on the model `onnxjpq.zoo.minilm` exports:

- floor: loading the model and opening an onnxruntime session on it, what any
  tool that checks the model pays;
- data-free: `compress --rate 8` without data;
- data-aware: `compress --rate 8 --calib` on the first N calibration sentences,
  for each N of --sentences.

Beside them: the largest Hessian the solve holds (float64 [groups, cols, cols] of
the widest layer) and the bytes of every compressible layer's inputs over the N
sentences, which is what capturing them all at once would hold. Peak memory that
stays flat as N grows is bounded by the model and one batch, not by the data.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from bench_data_aware import ROOT, compress

_FLOOR = ("import sys, onnx\nimport onnxjpq.cli\nfrom onnxjpq.runtime.sessions import session\n"
          "session(onnx.load(sys.argv[1]))\n"
          "print('peak_kb', next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')),"
          " file=sys.stderr)\n")


def floor(path: Path) -> dict:
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", _FLOOR, str(path)], capture_output=True, text=True, check=True)
    return {"seconds": time.perf_counter() - start,
            "peak_mb": int(run.stderr.rsplit("peak_kb", 1)[1].split()[0]) / 1024}


def largest_hessian_mb(path: Path) -> float:
    """float64 cols x cols of the widest 2-D MatMul weight (MiniLM's layers are all MatMul)."""
    model = onnx.load(path)
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    cols = [weights[i][0] for n in model.graph.node if n.op_type == "MatMul" for i in n.input
            if len(weights.get(i, ())) == 2]
    return 8 * max(cols) ** 2 / 2 ** 20


def all_inputs_mb(path: Path, feed: dict[str, np.ndarray]) -> float:
    """Bytes of the inputs of every MatMul with a weight, over the whole feed at once."""
    from onnxjpq.runtime.sessions import session

    model = onnx.load(path)
    weights = {t.name for t in model.graph.initializer}
    names = list(dict.fromkeys(i for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights
                               for i in n.input[:1]))
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    outs = session(model).run(names, feed)
    return sum(o.nbytes for o in outs) / 2 ** 20


def main(argv: list[str] | None = None) -> int:
    from onnxjpq.zoo import minilm

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sentences", default="32,128,512")
    parser.add_argument("--options", default="--rate 8", help="the compress options of both compress rows")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks_calib_cost.md")
    args = parser.parse_args(argv)
    options = shlex.split(args.options)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = minilm.export_minilm(work / "minilm.onnx")
        rows = [("floor: load + onnxruntime session", floor(path), ""),
                (f"data-free {args.options}", compress(path, work / "free.onnx", options), "")]
        for count in [int(n) for n in args.sentences.split(",")]:
            sentences = minilm.calibration_sentences(count)
            calib = minilm.write_sentences_npz(work / f"calib{count}.npz", sentences)
            figures = compress(path, work / f"aware{count}.onnx", [*options, "--calib", str(calib)])
            held = all_inputs_mb(path, minilm.encode_sentences(sentences))
            rows.append((f"data-aware {args.options} --calib, {count} sentences", figures, f"{held:.0f}"))
            print(rows[-1], file=sys.stderr, flush=True)
        hessian = largest_hessian_mb(path)
    command = "python tools/bench_calib_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])
    base = rows[1][1]["peak_mb"]
    lines = ["# What data-aware compression costs (all-MiniLM-L6-v2)", "",
             f"Measured with `{command.strip()}` (2-core machine); largest Hessian {hessian:.1f} MB.", "",
             "| run | seconds | peak MB | peak over data-free MB | all layer inputs at once MB |",
             "| --- | --- | --- | --- | --- |"]
    for label, figures, held in rows:
        over = f"{figures['peak_mb'] - base:+.0f}" if label.startswith("data-aware") else ""
        lines.append(f"| {label} | {figures['seconds']:.1f} | {figures['peak_mb']:.0f} | {over} | {held} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
