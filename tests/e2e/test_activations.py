"""--activations int8: full QDQ models from onnxruntime's calibrators with onnxjpq's weight codes."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxjpq import OpqConfig, OptionError, OutputConfig, Selection
from onnxjpq.workflows.activations import ActivationConfig, compress_with_activations
from onnxjpq.workflows.against_fp32 import output_snr_db
from onnxjpq.cli import main
from onnxjpq.pipeline.compress import compress_model
from onnxjpq.graph.io import load_model
from onnxjpq.runtime.data import load_dataset
from onnxjpq.runtime.sessions import accuracy, predict, session

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(scope="module")
def lenet():
    model = load_model(MODELS / "lenet5.onnx")
    return model, load_dataset(MODELS / "lenet5_train.npz", session(model)), \
        load_dataset(MODELS / "lenet5_test.npz", session(model))


def _activation_quantizers(model: onnx.ModelProto) -> int:
    inits = {t.name for t in model.graph.initializer}
    return sum(n.op_type == "QuantizeLinear" and n.input[0] not in inits for n in model.graph.node)


@pytest.mark.slow
def test_full_qdq_keeps_weight_codes_and_accuracy(lenet):
    model, calib, test = lenet
    config = OpqConfig(prune=0.5, bits=4)
    qmodel, report = compress_with_activations(model, config, Selection(), OutputConfig(), ActivationConfig(),
                                               calib)
    assert _activation_quantizers(qmodel) >= 6
    weights, _ = compress_model(model, config, Selection(), OutputConfig(format="float", int4=False))
    floats = {t.name: onnx.numpy_helper.to_array(t) for t in weights.graph.initializer}
    ints = {t.name: onnx.numpy_helper.to_array(t) for t in qmodel.graph.initializer}
    for row in report["layers"]:
        if row["name"] + "_quantized" in ints:
            codes = ints[row["name"] + "_quantized"]
            # int8 with zero point 0, or uint8 with 128 where the CPU's u8 x s8 kernels saturate
            zero = {np.dtype(np.int8): 0, np.dtype(np.uint8): 128}[codes.dtype]
            assert row["container"] == codes.dtype.name
            np.testing.assert_array_equal((codes.astype(np.float32) - zero) * np.float32(row["step"]),
                                          floats[row["name"]])
    assert report["settings"]["activations"]["output_snr_db"] >= 25
    info = report["settings"]["activations"]  # measured against fp32 in the same run (issue 13, item 5)
    assert info["latency_ratio"] > 0 and info["threads"] == 1 and np.isfinite(info["fp32_snr_db"])
    assert any(n.startswith("int8 measured on the calibration inputs") and "activations stayed float" in n
               for n in report["settings"]["notes"])
    fp32 = accuracy(predict(session(model), test), test.labels)
    assert accuracy(predict(session(qmodel), test), test.labels) >= fp32 - 1.5


@pytest.mark.slow
def test_a_strict_target_keeps_the_worst_activations_in_float(lenet):
    model, calib, _ = lenet
    loose, _ = compress_with_activations(model, OpqConfig(bits=8), Selection(),
                                         OutputConfig(), ActivationConfig(min_snr_db=10), calib)
    strict, report = compress_with_activations(model, OpqConfig(bits=8), Selection(),
                                               OutputConfig(), ActivationConfig(min_snr_db=46), calib)
    info = report["settings"]["activations"]
    assert info["kept_float"]
    assert _activation_quantizers(strict) < _activation_quantizers(loose)
    assert info["output_snr_db"] >= 46 or len(info["kept_float"]) == info["quantized"] + len(info["kept_float"])


def test_output_snr_db_of_identical_outputs_is_infinite():
    assert output_snr_db([np.ones(3)], [np.ones(3)]) == float("inf")


def test_unknown_calibrator_is_refused():
    with pytest.raises(OptionError):
        ActivationConfig(calibrate="kmeans")


def test_cli_activations_need_calibration_data(tmp_path):
    result = CliRunner().invoke(main, ["compress", str(MODELS / "lenet5.onnx"), "-o", str(tmp_path / "o.onnx"),
                                       "--activations", "int8"])
    assert result.exit_code == 2
    assert "calibration data" in result.output
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.slow
def test_json_output_stays_json_with_a_calibrator_that_prints(tmp_path):
    """onnxruntime's percentile and entropy calibrators print their progress to stdout."""
    result = CliRunner().invoke(main, [
        "compress", str(MODELS / "lenet5.onnx"), "-o", str(tmp_path / "o.onnx"), "--json", "--calib",
        str(MODELS / "lenet5_train.npz"), "--activations", "int8", "--act-calibrate", "percentile"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["settings"]["activations"]["calibrate"] == "percentile"
    assert report["settings"]["activations"]["measure"] == "agreement"


def _fixed_batch_mlp(path: Path) -> None:
    from onnxjpq.testing import laplace, make_model
    text = "agraph (float[2, 16] x) => (float[2, 8] y) { h = MatMul (x, W1) \n y = MatMul (h, W2) }"
    onnx.save_model(make_model(text, {"W1": laplace((16, 32)), "W2": laplace((32, 8), seed=1)}), str(path))


@pytest.mark.parametrize("options", [["--rate", "4"], ["--bits", "8", "--activations", "int8"]])
def test_calibration_runs_in_the_models_fixed_batch_size(tmp_path, options):
    src, out, calib = tmp_path / "fixed.onnx", tmp_path / "out.onnx", tmp_path / "calib.npz"
    _fixed_batch_mlp(src)
    np.savez(calib, x=np.random.default_rng(0).standard_normal((9, 16)).astype(np.float32))  # 4 batches + 1
    result = CliRunner().invoke(main, ["compress", str(src), "-o", str(out), "-q", "--calib", str(calib), *options])
    assert result.exit_code == 0, (result.output, result.exception)
    onnx.checker.check_model(onnx.load(str(out)))


def test_activations_on_a_model_reshaping_by_an_initializer(tmp_path):
    """onnxruntime's pre-processing must not move the caller's tensors to external data."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxjpq.testing import laplace
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["f"]), helper.make_node("MatMul", ["f", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(np.array([-1, 16], np.int64), "shape"), numpy_helper.from_array(laplace((16, 8)), "W")])
    src, out, calib = tmp_path / "flat.onnx", tmp_path / "out.onnx", tmp_path / "calib.npz"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    np.savez(calib, x=np.random.default_rng(0).standard_normal((16, 4, 4)).astype(np.float32))
    result = CliRunner().invoke(main, ["compress", str(src), "-o", str(out), "-q", "--bits", "8",
                                       "--activations", "int8", "--calib", str(calib)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert _activation_quantizers(onnx.load(str(out))) > 0


def _constant_weight_convs(path: Path, opset: int) -> None:
    """Two Convs whose weights are Constant nodes (as PaddlePaddle exports them), at `opset`."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxjpq.testing import laplace
    weights = {"w1": laplace((8, 3, 3, 3)), "w2": laplace((4, 8, 3, 3), seed=1)}
    nodes = [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(w, name))
             for name, w in weights.items()]
    nodes += [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["h"], ["r"]),
              helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.save_model(model, str(path))


@pytest.mark.parametrize("opset", [11, 12])
@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_old_opsets_with_constant_node_weights_get_int8_weights(tmp_path, opset, granularity):
    """Below opset 13 DequantizeLinear has no axis: the model is upgraded; Constant-node weights
    become int8 initializers on onnxjpq's steps (onnxruntime's quantizer takes only initializers)."""
    src, out, calib = tmp_path / "convs.onnx", tmp_path / "out.onnx", tmp_path / "calib.npz"
    _constant_weight_convs(src, opset)
    x = np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)
    np.savez(calib, x=x)
    result = CliRunner().invoke(main, ["compress", str(src), "-o", str(out), "-q", "--bits", "8", "--granularity",
                                       granularity, "--activations", "int8", "--calib", str(calib)])
    assert result.exit_code == 0, (result.output, result.exception)
    qmodel = onnx.load(str(out))
    codes = {t.name: t.data_type for t in qmodel.graph.initializer if t.name.startswith(("w1", "w2"))}
    # int8, or uint8 where this CPU's u8 x s8 kernels saturate (workflows.activations tries both)
    assert codes.get("w1_quantized") in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    assert codes.get("w2_quantized") == codes["w1_quantized"]
    assert _activation_quantizers(qmodel) > 0
    ref = session(str(src)).run(None, {"x": x})[0]
    assert output_snr_db([ref], session(qmodel).run(None, {"x": x})) > 20


def test_a_model_onnxruntime_cannot_run_on_the_data_is_a_one_line_error(tmp_path):
    """The Add broadcasts [N, 8] with [8, 8]: valid for batches of 8 only; 16 calibration samples."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxjpq.testing import laplace
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("MatMul", ["z", "V"], ["u"]),
         helper.make_node("Add", ["u", "V"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(laplace((16, 8)), "W"), numpy_helper.from_array(laplace((8, 8), seed=2), "V")])
    src, out, calib = tmp_path / "m.onnx", tmp_path / "out.onnx", tmp_path / "calib.npz"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    np.savez(calib, x=np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32))
    for options in (["--activations", "int8"], ["--rate", "8"]):
        result = CliRunner().invoke(main, ["compress", str(src), "-o", str(out), "-q", "--calib", str(calib), *options])
        assert result.exit_code == 2, result.output
        assert "onnxruntime cannot run the model on these inputs" in result.output
        assert "Traceback" not in result.output and not out.exists()


def test_an_all_zero_layer_gets_zero_codes_and_a_usable_scale(tmp_path):
    """Its step is 0; onnxruntime divided by it (NaN codes, numpy warnings) before the override used 1."""
    import warnings

    from onnx import TensorProto, helper, numpy_helper

    from onnxjpq.testing import laplace
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("Relu", ["z"], ["r"]),
         helper.make_node("MatMul", ["r", "V"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.zeros((16, 8), np.float32), "W"), numpy_helper.from_array(laplace((8, 4)), "V")])
    src, out, calib = tmp_path / "m.onnx", tmp_path / "out.onnx", tmp_path / "calib.npz"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    np.savez(calib, x=np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = CliRunner().invoke(main, ["compress", str(src), "-o", str(out), "-q", "--calib", str(calib),
                                           "--activations", "int8", "--min-params", "1"])
    assert result.exit_code == 0, result.output
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    assert not inits["W_quantized"].any() and (inits["W_scale"] > 0).all()


def test_a_failure_inside_onnxruntimes_quantizer_is_one_line_and_exit_2(tmp_path):
    """sqrt(x − 10) on inputs in [0, 1): every activation after it is NaN, and onnxruntime's
    calibrator fails on the NaN ranges (an AssertionError, "scale issue") inside quantize_static."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxjpq.testing import laplace
    graph = helper.make_graph(
        [helper.make_node("Sub", ["x", "ten"], ["d"]), helper.make_node("Sqrt", ["d"], ["s"]),
         helper.make_node("MatMul", ["s", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        [numpy_helper.from_array(laplace((16, 16)), "W"), numpy_helper.from_array(np.array(10.0, np.float32), "ten")])
    src, out, calib = tmp_path / "m.onnx", tmp_path / "out.onnx", tmp_path / "calib.npz"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    np.savez(calib, x=np.random.default_rng(0).random((8, 16)).astype(np.float32))
    before = src.read_bytes()
    result = CliRunner().invoke(main, ["compress", str(src), "-o", str(out), "-q", "--calib", str(calib),
                                       "--activations", "int8"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: onnxruntime's quantizer failed on this model:")
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert not out.exists() and src.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") or "tmp" in p.name] == []


def test_a_conv_batchnorm_pair_is_folded_before_its_weights_are_coded(tmp_path):
    """The BatchNormalization is folded into the Conv before the weights are coded, so the int8
    codes are those of the weight onnxruntime multiplies by: one QLinearConv, no float
    BatchNormalization between a DequantizeLinear and a QuantizeLinear (as on PP-OCR, 35 of them)."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxjpq.testing import laplace
    rng = np.random.default_rng(0)
    bn = [numpy_helper.from_array(a.astype(np.float32), n) for a, n in
          ((rng.uniform(0.5, 2, 8), "gamma"), (rng.normal(size=8), "beta"), (rng.normal(size=8), "mean"),
           (rng.uniform(0.5, 2, 8), "var"))]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["b"]),
         helper.make_node("Relu", ["b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 8, 8])],
        [numpy_helper.from_array(laplace((8, 4, 3, 3)), "W"), *bn])
    src, out, calib = tmp_path / "m.onnx", tmp_path / "out.onnx", tmp_path / "calib.npz"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    np.savez(calib, x=rng.standard_normal((16, 4, 8, 8)).astype(np.float32))
    result = CliRunner().invoke(main, ["compress", str(src), "-o", str(out), "-q", "--calib", str(calib),
                                       "--activations", "int8", "--report", str(tmp_path / "report.json")])
    assert result.exit_code == 0, result.output
    qmodel = onnx.load(out)
    ops = [n.op_type for n in qmodel.graph.node]
    assert "BatchNormalization" not in ops and ops.count("Conv") == 1 and "QuantizeLinear" in ops
    notes = json.loads((tmp_path / "report.json").read_text())["settings"]["notes"]
    assert "1 BatchNormalization folded into the Conv before them" in notes
    x = {"x": np.load(calib)["x"][:4]}
    want, got = (session(load_model(path)).run(None, x)[0] for path in (src, out))
    assert output_snr_db([want], [got]) >= 25
    assert any(t.data_type in (TensorProto.INT8, TensorProto.UINT8) and tuple(t.dims) == (8, 4, 3, 3)
               for t in qmodel.graph.initializer)


@pytest.mark.parametrize("container, dtype, zero", [("int8", onnx.TensorProto.INT8, 0),
                                                    ("uint8", onnx.TensorProto.UINT8, 128)])
def test_act_weights_fixes_the_weight_container(container, dtype, zero, tmp_path):
    """--act-weights int8 writes the placement TensorRT, OpenVINO and QNN take (symmetric int8
    codes, zero point 0) whatever this CPU measured; uint8 the same codes + 128."""
    src, out, calib = tmp_path / "convs.onnx", tmp_path / "out.onnx", tmp_path / "calib.npz"
    _constant_weight_convs(src, 13)
    x = np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)
    np.savez(calib, x=x)
    result = CliRunner().invoke(main, ["compress", str(src), "-o", str(out), "-q", "--activations", "int8",
                                       "--calib", str(calib), "--act-weights", container])
    assert result.exit_code == 0, (result.output, result.exception)
    qmodel = onnx.load(str(out))
    inits = {t.name: t for t in qmodel.graph.initializer}
    for name in ("w1", "w2"):
        assert inits[f"{name}_quantized"].data_type == dtype
        weight_dq = next(n for n in qmodel.graph.node if n.op_type == "DequantizeLinear"
                         and n.input[0] == f"{name}_quantized")
        assert np.all(onnx.numpy_helper.to_array(inits[weight_dq.input[2]]) == zero)
    ref = session(str(src)).run(None, {"x": x})[0]
    assert output_snr_db([ref], session(qmodel).run(None, {"x": x})) > 20


@pytest.mark.parametrize("calibrate", ["mse", "auto"])
def test_mse_and_auto_ranges_write_a_model_as_close_as_min_max(calibrate, tmp_path):
    """--act-calibrate mse: each activation's range of least quantization error; auto: per
    activation the calibrator whose range the outputs suffer least from, started from the best
    single one, so on the calibration data it is at least as close as min/max (bar the
    difference between the fake-quantized search and the integer kernels)."""
    snr = {}
    for method in ("minmax", calibrate):
        out, report = tmp_path / f"{method}.onnx", tmp_path / f"{method}.json"
        result = CliRunner().invoke(main, [
            "compress", str(MODELS / "lenet5.onnx"), "-o", str(out), "-q", "--report", str(report), "--calib",
            str(MODELS / "lenet5_train.npz"), "--activations", "int8", "--act-calibrate", method,
            "--act-weights", "uint8"])
        assert result.exit_code == 0, (result.output, result.exception)
        info = json.loads(report.read_text())["settings"]["activations"]
        assert info["calibrate"] == method and info["kept_float"] == []
        snr[method] = info["output_snr_db"]
    assert any(f"--act-calibrate {calibrate}" in note for note in info["notes"]), info["notes"]
    assert snr[calibrate] > snr["minmax"] - 1.0, snr


def test_the_fake_quantized_copy_computes_what_quantize_linear_does():
    from onnxjpq.testing import make_model
    from onnxjpq.workflows.activation_ranges import _fake_quantized, _qparams

    model = make_model("agraph (float[4, 8] x) => (float[4, 8] y, float[4, 8] h) { h = Relu (x) \n y = Mul (h, x) }",
                       {})
    fake = _fake_quantized(model, ["x", "h"])
    onnx.checker.check_model(fake, full_check=True)
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32) * 3
    feeds = {"x": x}
    for name, (lo, hi) in {"x": (-2.0, 1.5), "h": (0.0, 2.5)}.items():
        feeds[f"{name}::fq_scale"], feeds[f"{name}::fq_zero"] = _qparams(lo, hi)

    def fq(v, name):
        scale, zero = float(feeds[f"{name}::fq_scale"]), int(feeds[f"{name}::fq_zero"])
        return ((np.clip(np.round(v / scale) + zero, 0, 255) - zero) * scale).astype(np.float32)

    y, h = session(fake, exact=True).run(None, feeds)
    qx = fq(x, "x")
    qh = fq(np.maximum(qx, 0), "h")
    np.testing.assert_allclose(h, qh, rtol=1e-6)  # a graph output sees the quantized value too
    np.testing.assert_allclose(y, qh * qx, rtol=1e-6)
