"""Shared fixtures: bundled and third-party model paths, tiny ONNX models on disk."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxjpq.testing import MLP, laplace, make_model

MODELS = Path(__file__).resolve().parent.parent / "models"


# Nothing to compress: no Conv, ConvTranspose, Gemm or MatMul.
NO_LAYER = """
agraph (float[2, 16] x) => (float[2, 16] y) {
    y = Relu (x)
}"""


def mlp_model() -> onnx.ModelProto:
    return make_model(MLP, {"W1": laplace((16, 16), 0.1, seed=1), "W2": laplace((16, 32), 0.05, seed=2),
                            "W3": laplace((32, 4), 0.2, seed=3)})


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return MODELS


@pytest.fixture(scope="session")
def lenet5_path() -> Path:
    return MODELS / "lenet5.onnx"


@pytest.fixture(scope="session")
def lenet5_test_path() -> Path:
    return MODELS / "lenet5_test.npz"


@pytest.fixture(scope="session")
def lenet300_path() -> Path:
    return MODELS / "lenet300.onnx"


@pytest.fixture(scope="session")
def lenet300_test_path() -> Path:
    return MODELS / "lenet300_test.npz"


@pytest.fixture(scope="session")
def silero_model_path():
    """name -> path of a model file shipped in the silero-vad package (skips if it is missing)."""
    def find(name: str) -> Path:
        pytest.importorskip("silero_vad")
        path = Path(str(importlib.resources.files("silero_vad") / "data" / name))
        if not path.is_file():
            pytest.skip(f"{name} is not shipped by this silero-vad version")
        return path
    return find


@pytest.fixture
def mlp_path(tmp_path) -> Path:
    """A tiny three-layer MLP saved to disk (fast to compress)."""
    path = tmp_path / "mlp.onnx"
    onnx.save_model(mlp_model(), str(path))
    return path


@pytest.fixture
def no_layer_path(tmp_path) -> Path:
    """A valid ONNX file with no compressible layer."""
    path = tmp_path / "relu.onnx"
    onnx.save_model(make_model(NO_LAYER, {}), str(path))
    return path


@pytest.fixture
def mlp_feeds() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)}
