"""Latency of `--activations int8` against fp32 on 224x224 conv nets, in onnxruntime on the CPU.

    python tools/bench_activations.py [--threads 2] [--runs 30]

Builds ResNet-18- and MobileNetV2-style models (tools/convnets.py, random
weights), compresses each with `onnxjpq compress --bits 8 --activations int8`
calibrated on random images, and times fp32 and int8 in the same run: median
of --runs single-image inferences after warm-up, at a fixed thread count.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
import convnets  # noqa: E402

from onnxjpq import OpqConfig, compress_file  # noqa: E402
from onnxjpq.workflows.activations import ActivationConfig  # noqa: E402


def median_latency_ms(path: Path, x: np.ndarray, threads: int, runs: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(5):
        sess.run(None, {"input": x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, {"input": x})
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    print(f"# onnxruntime {ort.__version__}, {platform.processor() or platform.machine()}, "
          f"threads={args.threads}, runs={args.runs}")
    print("| model | fp32 ms | int8 ms | ratio | activations kept float | output SNR dB |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        calib = Path(tmp) / "calib.npz"
        np.savez(calib, input=rng.standard_normal((16, 3, 224, 224)).astype(np.float32))
        for name, build in (("resnet18", convnets.resnet18), ("mobilenet_v2", convnets.mobilenet_v2)):
            fp32 = convnets.export(build(), Path(tmp) / f"{name}.onnx")
            int8 = Path(tmp) / f"{name}.int8.onnx"
            report = compress_file(fp32, int8, OpqConfig(bits=8), calib=calib,
                                   activations=ActivationConfig(samples=16))
            act = report["settings"]["activations"]
            base = median_latency_ms(fp32, x, args.threads, args.runs)
            quant = median_latency_ms(int8, x, args.threads, args.runs)
            print(f"| {name} | {base:.2f} | {quant:.2f} | {quant / base:.2f}x | {len(act['kept_float'])} | "
                  f"{act['output_snr_db']:.1f} |")


if __name__ == "__main__":
    main()
