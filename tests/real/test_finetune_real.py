"""Fine-tuning a real pretrained CNN (issue 14): PaddleOCR's direction classifier, taken to
data-free `--rate 12` where post-training flips 1 decision in 8, is distilled from its fp32
outputs on unlabelled lines (512 of seed 1; evaluation on the registry's 128 of seed 0).

Measured here (2-core machine): post-training 0.875 top-1 agreement; masked 0.969 and admm
0.984 at the same rate, in about 40 and 55 s. djpq (asked for 12x fewer BOPs) with its layer
inputs quantized keeps 0.992 at 16.8x in about 125 s; with float inputs (`--float-activations`)
it kept 1.000 but reached only 4.2x: at --lr 1e-4 its bits barely move, at DJPQ's 1e-3 this
model's training diverges, and few channels can be pruned exactly (HardSwish and biases follow
most convolutions, once BatchNormalization is folded into them).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from onnxjpq.cli import main

pytest.importorskip("torch")

TRAIN_SAMPLES = 512
GROUND_TRUTH = ("labels", "text", "boxes", "f0_hz", "notes")


@pytest.fixture(scope="module")
def setting(cnn_case, tmp_path_factory):
    """The case, its unlabelled training file, and post-training `--rate 12`'s agreement."""
    case = cnn_case("ppocr_cls")
    folder = tmp_path_factory.mktemp("finetune_real")
    train = folder / "train.npz"
    np.savez(train, **{k: v for k, v in case.entry.data(TRAIN_SAMPLES, 1).items() if k not in GROUND_TRUTH})
    out = folder / "post.onnx"
    result = CliRunner().invoke(main, ["compress", str(case.path), "-o", str(out), "--rate", "12", "-q"])
    assert result.exit_code == 0, result.output
    post = case.entry.evaluate(case.path, out, case.data, case.reference)["top1_agreement"]
    assert post <= 0.95  # the setting loses decisions, so there is something to recover
    return case, train, post


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize("method, options", [
    ("masked", ["--epochs", "3", "--lr", "0.001", "--optimizer", "adam"]),
    ("admm", ["--epochs", "3", "--retrain-epochs", "3", "--lr", "0.001", "--optimizer", "adam"]),
    ("djpq", ["--epochs", "5", "--retrain-epochs", "3", "--lr", "0.0001"]),
])
def test_distillation_recovers_at_least_half_of_what_post_training_lost(setting, tmp_path, method, options):
    case, train, post = setting
    out, report = tmp_path / f"{method}.onnx", tmp_path / f"{method}.json"
    result = CliRunner().invoke(main, ["finetune", str(case.path), "-o", str(out), "--data", str(train),
                                       "--method", method, "--rate", "12", "--report", str(report), "-q", *options])
    assert result.exit_code == 0, (result.output, result.exception)
    tuned = case.entry.evaluate(case.path, out, case.data, case.reference)["top1_agreement"]
    assert tuned - post >= 0.5 * (1.0 - post), (method, post, tuned)
    written = json.loads(report.read_text())
    print(method, post, tuned, {k: written["totals"].get(k) for k in ("rate", "storage_rate", "bops_ratio",
                                                                      "bops_ratio_learned")},
          {k: v for k, v in written["finetune"].items() if k.startswith("torch_vs")})  # for docs/benchmarks.md
    if method == "djpq":  # quantized layer inputs: float rounding order moves a few codes (a note says so)
        assert written["finetune"]["torch_vs_onnxruntime_mean_abs"] < 1e-2
        assert len(written["finetune"]["learned_input_bits"]) > 40
        assert written["totals"]["bops_ratio"] >= 12  # the budget, met once inputs count their bits
    else:
        assert written["finetune"]["torch_vs_onnxruntime_max_abs"] < 1e-4
    if method == "masked":
        assert written["totals"]["storage_rate"] >= 11.5
    elif method == "admm":
        assert written["totals"]["rate"] >= 11.5  # the papers' rate, which --rate sets for admm
