"""Packed file bytes against what the report counts, on the bundled and the real models.

    python tools/packed_sizes.py                     # every model available, default, --rate 8, --rate 16
    python tools/packed_sizes.py lenet5 ppocr_cls    # some of them

For each model and setting: `onnxjpq compress MODEL --format packed`, then the file's
bytes, the bound the tests hold it to (`onnxjpq.testing.packed_size_bound`: 1.1 x (the
tensors left uncompressed + storage bits / 8) + 8 KiB), their ratio, and the overhead:
the bytes beyond uncompressed + storage bits / 8 (the decoder, the packing's rounding),
in all and per layer. The real models come from onnxjpq.zoo (their packages must be
installed); all-MiniLM-L6-v2 is left out (its export takes minutes: pass `minilm`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ([], ["--rate", "8"], ["--rate", "16"])
ZOO = ("ppocr_cls", "orientation", "crepe", "basicpitch", "ppocr_rec", "ppocr_det")


def sources(folder: Path, names: list[str]) -> dict[str, Path]:
    from onnxjpq.zoo import silero
    from onnxjpq.zoo.cnns import BY_NAME

    found = {n: ROOT / "models" / f"{n}.onnx" for n in ("lenet5", "lenet300")}
    for name in ZOO:
        if BY_NAME[name].available():
            found[name] = BY_NAME[name].export(folder)
    if silero.model_path("silero_vad.onnx") is not None:
        found["silero"] = silero.model_path("silero_vad.onnx")
    if "minilm" in names:
        from onnxjpq.zoo.minilm import export_minilm

        found["minilm"] = export_minilm(folder / "minilm.onnx")
    return {n: p for n, p in found.items() if not names or n in names}


def measure(src: Path, options: list[str], folder: Path) -> dict:
    out, report = folder / "out.onnx", folder / "out.json"
    subprocess.run([sys.executable, "-m", "onnxjpq", "compress", str(src), "-o", str(out), "-q", "--format",
                    "packed", "--report", str(report), *options], check=True)
    return json.loads(report.read_text())


def main(argv: list[str]) -> int:
    from onnxjpq.testing import packed_size_bound

    print("model        setting   layers   file bytes        bound  ratio   overhead  per layer")
    with tempfile.TemporaryDirectory(prefix="onnxjpq-sizes-") as tmp:
        folder = Path(tmp)
        for name, src in sources(folder, argv).items():
            for options in SETTINGS:
                report = measure(src, options, folder)
                t = report["totals"]
                counted = t["bytes_in"] - 4 * t["params"] + 32 * t["params"] / t["storage_rate"] / 8
                bound, overhead = packed_size_bound(t), t["bytes_out"] - counted
                print(f"{name:12s} {' '.join(options) or 'default':9s} {t['layers']:6d} {t['bytes_out']:12,} "
                      f"{bound:12,.0f}  {t['bytes_out'] / bound:.3f} {overhead:10,.0f} {overhead / t['layers']:10,.0f}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
