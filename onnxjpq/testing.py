"""Tiny models for tests, written as ONNX text, and an onnxruntime comparison helper."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper, parser


def make_model(text: str, weights: dict[str, np.ndarray], opset: int = 17) -> onnx.ModelProto:
    """Parse an ONNX text graph and attach float32 initializers `weights`."""
    model = parser.parse_model(f'<ir_version: 8, opset_import: ["" : {opset}]>\n' + text)
    model.graph.initializer.extend(numpy_helper.from_array(np.asarray(v, np.float32), k)
                                   for k, v in weights.items())
    onnx.checker.check_model(model)
    return model


def laplace(shape, scale: float = 0.1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).laplace(0.0, scale, size=shape).astype(np.float32)


def run(model: onnx.ModelProto | bytes | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a model in onnxruntime on the CPU."""
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_ort_close(a, b, feeds: dict[str, np.ndarray], rtol: float = 1e-5, atol: float = 1e-5) -> None:
    """Both models give the same outputs on `feeds`."""
    for x, y in zip(run(a, feeds), run(b, feeds), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


# Three MatMul layers: the first and last are kept at 8 bits by the default
# selection, the middle one (16x32 = 512 params) is compressed.
MLP = """
agraph (float[2, 16] x) => (float[2, 4] y) {
    h1 = MatMul (x, W1)
    r1 = Relu (h1)
    h2 = MatMul (r1, W2)
    r2 = Relu (h2)
    y = MatMul (r2, W3)
}"""


CONV = """
agraph (float[1, 3, 8, 8] x) => (float[1, 8, 8, 8] y) {
    y = Conv <pads = [1, 1, 1, 1]> (x, W)
}"""


def packed_size_bound(totals: dict) -> float:
    """The most bytes a packed output may take (issue 12): 1.1 x (the bytes of what was left
    uncompressed + the storage bits the report counts / 8) + 8 KiB, for an fp32 input.

    Holds the report and the file together: a packed file that outgrows what `storage_rate`
    says it stores fails the tests that call this."""
    storage = 32 * totals["params"] / totals["storage_rate"] / 8
    uncompressed = totals["bytes_in"] - 4 * totals["params"]
    return 1.1 * (uncompressed + storage) + 8192


def conv_model(seed: int = 0) -> onnx.ModelProto:
    return make_model(CONV, {"W": laplace((8, 3, 3, 3), seed=seed)})
