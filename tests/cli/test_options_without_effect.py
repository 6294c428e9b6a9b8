"""Options that would change nothing are refused or reported, never silently accepted (issue 15, item 17)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from onnxjpq import OpqConfig, OutputConfig, Selection
from onnxjpq.errors import OptionError
from onnxjpq.cli import main
from onnxjpq.graph.io import load_model
from onnxjpq.methods.annc import AnncConfig, unbound_bit_limits
from onnxjpq.runtime.data import load_dataset
from onnxjpq.runtime.sessions import session
from onnxjpq.workflows.activations import ActivationConfig, compress_with_activations

MODELS = Path(__file__).resolve().parents[2] / "models"
LENET5, TRAIN = MODELS / "lenet5.onnx", MODELS / "lenet5_train.npz"


def _run(*args) -> "click.testing.Result":
    return CliRunner().invoke(main, [str(a) for a in args])


def _refused(result, *matches: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for match in matches:
        assert match in lines[0], lines[0]


@pytest.mark.parametrize("options, flags, mode", [
    (["--act-snr", "30"], "--act-snr only applies", "with --activations int8"),
    (["--act-calibrate", "entropy", "--weights-qdq"], "--act-calibrate, --weights-qdq only apply",
     "with --activations int8"),
    (["--rate", "8", "--act-snr", "30"], "--act-snr only applies", "with --activations int8"),
    (["--act-weights", "int8"], "--act-weights only applies", "with --activations int8"),
    (["--min-bits", "3"], "--min-bits only applies", "to the budget modes"),
    (["--prune", "0.5", "--pow2-bits", "--objective", "bops"], "--pow2-bits, --objective only apply",
     "to the budget modes"),
    (["--bits", "4", "--max-bits", "6"], "--max-bits only applies", "to the budget modes"),
])
def test_options_the_mode_never_reads_are_refused(options, flags, mode, tmp_path):
    out = tmp_path / "out.onnx"
    _refused(_run("compress", LENET5, "-o", out, *options), flags, mode)
    assert not out.exists()


@pytest.mark.parametrize("fmt", ["packed", "float", "sparse"])
@pytest.mark.parametrize("activations", ["int8", "dynamic"])
def test_a_weight_format_the_activation_path_does_not_write_is_refused(fmt, activations, tmp_path):
    out = tmp_path / "out.onnx"
    _refused(_run("compress", LENET5, "-o", out, "--format", fmt, "--activations", activations),
             f"--format {fmt} with --activations {activations}", "writes its own weights")
    assert not out.exists()


@pytest.mark.parametrize("options, match", [
    (["--method", "masked", "--prune", "0.5", "--pow2-bits"], "--pow2-bits only applies to --method djpq"),
    (["--method", "djpq", "--rate", "8", "--rho", "0.1"], "--rho only applies to --method admm"),
    (["--method", "admm", "--rate", "8", "--float-activations"], "--float-activations only applies to --method djpq"),
    (["--method", "masked", "--prune", "0.5", "--retrain-epochs", "2"],
     "--retrain-epochs only applies to --method admm and djpq"),
])
def test_finetune_options_of_another_method_are_refused(options, match, tmp_path):
    out = tmp_path / "out.onnx"
    _refused(_run("finetune", LENET5, "-o", out, "--data", TRAIN, *options), match, "has no effect")
    assert not out.exists()


@pytest.mark.parametrize("snr", ["nan", "-3", "inf"])
def test_an_activation_snr_target_that_is_not_a_finite_positive_number_is_refused(snr, tmp_path):
    out = tmp_path / "out.onnx"
    _refused(_run("compress", LENET5, "-o", out, "--activations", "int8", "--calib", TRAIN, "--act-snr", snr),
             "activation SNR target must be a finite number of dB >= 0")
    assert not out.exists()
    with pytest.raises(OptionError):
        ActivationConfig(min_snr_db=float(snr))


def _weights(path: Path) -> dict[str, bytes]:
    return {t.name: t.SerializeToString() for t in onnx.load(str(path)).graph.initializer}


def test_a_budget_bound_that_changes_no_layer_is_reported_and_one_that_does_is_not(tmp_path):
    plain, floor, cap = tmp_path / "plain.onnx", tmp_path / "floor.onnx", tmp_path / "cap.onnx"
    assert _run("compress", LENET5, "-o", plain, "--rate", 8, "-q").exit_code == 0
    result = _run("compress", LENET5, "-o", floor, "--rate", 8, "--min-bits", 3, "--report", tmp_path / "f.json")
    assert result.exit_code == 0, result.output
    assert "note: --min-bits had no effect: without it the allocation is the same" in result.output
    assert _weights(floor) == _weights(plain)  # what the note claims, checked
    result = _run("compress", LENET5, "-o", cap, "--rate", 8, "--max-bits", 7, "--report", tmp_path / "c.json")
    assert result.exit_code == 0 and "no effect" not in result.output
    assert _weights(cap) != _weights(plain)
    notes = json.loads((tmp_path / "f.json").read_text())["settings"]["notes"]
    assert any(n.startswith("--min-bits had no effect") for n in notes)


def test_unbound_bit_limits_names_the_limits_no_layer_reaches():
    config = AnncConfig(rate=8, min_bits=3, max_bits=7)
    assert unbound_bit_limits(config, [4, 5, 6]) == [
        "--min-bits 3 did not bind: no layer is at 3 bits (the narrowest is 4)",
        "--max-bits 7 did not bind: no layer is at 7 bits (the widest is 6)"]
    assert unbound_bit_limits(config, [3, 7]) == []
    assert unbound_bit_limits(AnncConfig(rate=8), [4, 5]) == []  # 2..8 bounds nothing


@pytest.mark.slow
def test_activation_quantization_that_keeps_everything_float_says_its_options_did_nothing():
    model = load_model(LENET5)
    calib = load_dataset(TRAIN, session(model))
    _, report = compress_with_activations(model, OpqConfig(bits=8), Selection(), OutputConfig(),
                                          ActivationConfig(min_snr_db=400, samples=32), calib)
    assert report["settings"]["activations"]["quantized"] == 0
    assert any(n.startswith("every activation stayed in float") and "(minmax) had no effect" in n
               for n in report["settings"]["notes"])


def test_two_targets_for_the_activations_are_refused(tmp_path):
    out = tmp_path / "out.onnx"
    _refused(_run("compress", LENET5, "-o", out, "--activations", "int8", "--calib", TRAIN, "--act-snr", 20,
                  "--act-max-drop", 0.5), "give --act-max-drop or --act-snr, not both")
    assert not out.exists()


@pytest.mark.parametrize("drop", ["nan", "-1", "101"])
def test_an_activation_drop_outside_0_to_100_points_is_refused(drop, tmp_path):
    out = tmp_path / "out.onnx"
    _refused(_run("compress", LENET5, "-o", out, "--activations", "auto", "--calib", TRAIN, "--act-max-drop", drop),
             "the activations' max drop must be 0 to 100 points")
    assert not out.exists()
