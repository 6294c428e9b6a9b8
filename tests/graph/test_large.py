"""Large models: the streaming path (external data in, external data out) and its benchmark."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxjpq import ModelError, OpqConfig, OptionError, compress_file
from onnxjpq.methods.annc import AnncConfig
from onnxjpq.pipeline import stream
from onnxjpq.pipeline.compress import OutputConfig
from onnxjpq.workflows.compress import streamable
from onnxjpq.graph.io import load_model_lazy
from onnxjpq.testing import laplace, run

ROOT = Path(__file__).resolve().parents[2]
FEEDS = {"x": np.linspace(-1, 1, 128, dtype=np.float32).reshape(2, 64)}


def _model(nan: bool = False, zero: bool = False) -> onnx.ModelProto:
    """MatMul, Gemm (transB, one outlier channel), a weight behind Transpose, a Constant-node weight."""
    w2 = laplace((96, 128), seed=2)
    w2[5] *= 20
    w3 = laplace((16, 96), seed=4)
    if nan:
        w3[0, 0] = np.nan
    if zero:
        w3[:] = 0
    inits = [numpy_helper.from_array(v, k) for k, v in
             {"W1": laplace((64, 128), seed=1), "W2": w2, "b2": laplace((96,), seed=3), "W3": w3}.items()]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h1"], name="mm1"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
        helper.make_node("Gemm", ["h2", "W2", "b2"], ["h3"], name="gemm", transB=1),
        helper.make_node("Transpose", ["W3"], ["W3t"], name="t3", perm=[1, 0]),
        helper.make_node("MatMul", ["h3", "W3t"], ["h4"], name="mm3"),
        helper.make_node("Constant", [], ["W4"], name="c4",
                         value=numpy_helper.from_array(laplace((16, 16), seed=5), "W4_value")),
        helper.make_node("MatMul", ["h4", "W4"], ["y"], name="mm4"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _pair(folder: Path, model: onnx.ModelProto) -> tuple[Path, Path]:
    """The same model saved plain and with every tensor in external data."""
    plain, ext = folder / "plain.onnx", folder / "ext.onnx"
    onnx.save_model(model, str(plain))
    onnx.save_model(model, str(ext), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.data", size_threshold=0)
    return plain, ext


def _tensors(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    tensors = onnx.external_data_helper._get_all_tensors(model)
    return {t.name: numpy_helper.to_array(t) for t in tensors}


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _without_bytes(report: dict) -> str:
    totals = {k: v for k, v in report["totals"].items() if not k.startswith(("bytes", "file"))}
    return json.dumps({**report, "totals": totals}, sort_keys=True, default=str)


@pytest.mark.parametrize("config, output, placeholders", [
    (OpqConfig(), OutputConfig(), True),
    (OpqConfig(prune=0.5, bits=4), OutputConfig(), True),
    (OpqConfig(bits=4), OutputConfig(), False),
    (OpqConfig(prune=0.3, bits=3, keep_survivors=False, granularity="channel"), OutputConfig(), True),
    (OpqConfig(prune=0.5, bits=4), OutputConfig(format="float"), True),
    (AnncConfig(rate=16), OutputConfig(), True),
    (AnncConfig(rate=8), OutputConfig(), False),
    (AnncConfig(rate=12, granularity="channel", min_bits=3), OutputConfig(), True),
    (AnncConfig(rate=24, objective="bops"), OutputConfig(), True),
    (AnncConfig(rate=10, objective="paper", pow2=True), OutputConfig(format="float"), True),
    (AnncConfig(size_kb=6), OutputConfig(), True),
])
def test_streaming_output_equals_the_in_memory_output(tmp_path, monkeypatch, config, output, placeholders):
    if placeholders:  # every float tensor read from the file only when a pass needs it
        monkeypatch.setattr(stream, "_PLACEHOLDER_BYTES", 0)
    _assert_streaming_equals_in_memory(tmp_path, _model(), config, output)


@pytest.mark.parametrize("config", [OpqConfig(prune=0.5, bits=4), OpqConfig(bits=3, keep_survivors=False)])
def test_streaming_equals_in_memory_on_a_layer_past_one_block(tmp_path, monkeypatch, config):
    from onnxjpq.core.quant import BLOCK

    w = laplace((256, 400), seed=7)  # MatMul: channels are columns, the outlier gets per-channel steps
    w[:, 3] *= 30
    assert w.size > BLOCK
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 400])],
                              [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    monkeypatch.setattr(stream, "_PLACEHOLDER_BYTES", 0)
    feeds = {"x": np.linspace(-1, 1, 512, dtype=np.float32).reshape(2, 256)}
    _assert_streaming_equals_in_memory(tmp_path, model, config, OutputConfig(), feeds)


def _assert_streaming_equals_in_memory(tmp_path, model, config, output, feeds=FEEDS):
    plain, ext = _pair(tmp_path, model)
    assert streamable(load_model_lazy(ext), config, output, None, None)
    assert not streamable(load_model_lazy(plain), config, output, None, None)
    memory = compress_file(plain, tmp_path / "a.onnx", config, output=output)
    streamed = compress_file(ext, tmp_path / "b.onnx", config, output=output)
    assert _without_bytes(streamed) == _without_bytes(memory)
    a, b = _tensors(tmp_path / "a.onnx"), _tensors(tmp_path / "b.onnx")
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    np.testing.assert_array_equal(run(str(tmp_path / "a.onnx"), feeds)[0], run(str(tmp_path / "b.onnx"), feeds)[0])
    assert streamed["totals"]["bytes_out"] == sum(p.stat().st_size for p in tmp_path.glob("b.onnx*"))


def test_streaming_output_uses_external_data_and_leaves_the_input_alone(tmp_path):
    _, ext = _pair(tmp_path, _model())
    (tmp_path / "plain.onnx").unlink()
    before = _digest(tmp_path)
    compress_file(ext, tmp_path / "out.onnx", OpqConfig(prune=0.5, bits=4))
    after = _digest(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(after.keys() - before.keys()) == ["out.onnx", "out.onnx.data"]
    model = onnx.load(str(tmp_path / "out.onnx"), load_external_data=False)
    locations = {e.value for t in onnx.external_data_helper._get_all_tensors(model)
                 for e in t.external_data if e.key == "location"}
    assert locations == {"out.onnx.data"}
    onnx.checker.check_model(str(tmp_path / "out.onnx"))


def test_a_failed_streaming_run_leaves_nothing_behind(tmp_path, monkeypatch):
    _, ext = _pair(tmp_path, _model())
    before = _digest(tmp_path)

    def broken(path, runtime):
        raise RuntimeError("check failed")

    monkeypatch.setattr(stream, "_check", broken)
    with pytest.raises(RuntimeError, match="check failed"):
        compress_file(ext, tmp_path / "out.onnx", OpqConfig())
    assert _digest(tmp_path) == before


def test_streaming_skips_a_layer_with_nan_like_the_in_memory_path(tmp_path, monkeypatch):
    monkeypatch.setattr(stream, "_PLACEHOLDER_BYTES", 0)
    plain, ext = _pair(tmp_path, _model(nan=True))
    memory = compress_file(plain, tmp_path / "a.onnx", OpqConfig(bits=4))
    streamed = compress_file(ext, tmp_path / "b.onnx", OpqConfig(bits=4))
    assert streamed["skipped"] == memory["skipped"]
    assert any("NaN" in s["reason"] for s in streamed["skipped"])
    assert streamed["layers"] == memory["layers"]
    np.testing.assert_array_equal(run(str(tmp_path / "a.onnx"), FEEDS)[0], run(str(tmp_path / "b.onnx"), FEEDS)[0])


def test_streaming_counts_an_all_zero_layer_like_the_in_memory_path(tmp_path, monkeypatch):
    monkeypatch.setattr(stream, "_PLACEHOLDER_BYTES", 0)
    plain, ext = _pair(tmp_path, _model(zero=True))
    memory = compress_file(plain, tmp_path / "a.onnx", OpqConfig(prune=0.5, bits=4))
    streamed = compress_file(ext, tmp_path / "b.onnx", OpqConfig(prune=0.5, bits=4))
    assert _without_bytes(streamed) == _without_bytes(memory)


def test_output_data_file_may_not_overwrite_the_input_data(tmp_path):
    model = _model()
    onnx.save_model(model, str(tmp_path / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="out.onnx.data", size_threshold=0)
    before = _digest(tmp_path)
    with pytest.raises(OptionError, match="is the input's external data file"):
        compress_file(tmp_path / "m.onnx", tmp_path / "out.onnx", OpqConfig())
    assert _digest(tmp_path) == before


def test_streaming_refuses_external_data_past_the_end_of_its_file(tmp_path):
    _, ext = _pair(tmp_path, _model())
    with open(tmp_path / "ext.data", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ModelError, match="run past the end"):
        compress_file(ext, tmp_path / "out.onnx", OpqConfig())
    assert not (tmp_path / "out.onnx").exists()


def test_cli_compresses_an_external_data_model_by_streaming(tmp_path):
    from click.testing import CliRunner

    from onnxjpq.cli import main

    _, ext = _pair(tmp_path, _model())
    result = CliRunner().invoke(main, ["compress", str(ext), "-o", str(tmp_path / "out.onnx"), "--bits", "4",
                                       "--report", str(tmp_path / "report.json")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out.onnx.data").is_file()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["totals"]["bytes_out"] == sum(p.stat().st_size for p in tmp_path.glob("out.onnx*"))
    assert run(str(tmp_path / "out.onnx"), FEEDS)[0].shape == (2, 16)


def test_magnitude_mask_matches_the_argsort_definition():
    from onnxjpq.methods.opq import magnitude_mask

    w = np.round(laplace((37, 11), seed=9), 2)  # rounding makes ties
    for k in (0, 1, 50, 200, w.size, w.size + 3):
        reference = np.ones(w.size, bool)
        reference[np.argsort(np.abs(w).ravel(), kind="stable")[:k]] = False
        np.testing.assert_array_equal(magnitude_mask(w, k), reference.reshape(w.shape))


def test_bench_large_runs_at_a_small_size(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_large.py"), "--size-gb", "0.02",
                          "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert any(line.startswith("floor (onnx.load+save)") for line in lines)
    row = next(line for line in lines if line.startswith("onnxjpq compress")).split("|")
    assert float(row[3]) > 0 and row[5].strip() in ("yes", "NO")
    assert list(tmp_path.iterdir()) == []  # the generated model is deleted


# ------------------------------------------------ large layers in blocks, bit for bit


def _whole_codes(w, mask, step, keep_survivors, max_code):
    """quantize_codes on the whole array (what the blocks must give)."""
    step = np.asarray(step, np.float64)
    q = np.floor(np.abs(w) / np.where(step > 0, step, 1.0) + 0.5)
    q = np.maximum(q, 1.0) if keep_survivors else q
    q = np.minimum(q, max_code) if max_code is not None else q
    return (np.sign(w) * q * mask * (step > 0)).astype(np.int32)


@pytest.mark.parametrize("shape, axis", [((300, 400), 0), ((300, 400), 1), ((40, 30, 9, 9), 0),
                                         ((20, 48, 11, 13), 1), ((70_001,), None)])
def test_blocked_codes_error_and_fit_equal_the_whole_array_ones(shape, axis):
    from onnxjpq.core.plan import LayerPlan
    from onnxjpq.core.quant import dequantize, quantize_codes
    from onnxjpq.core.storage import index_bits
    from onnxjpq.pipeline.report import layer_row
    from onnxjpq.core.stats import laplace_fit

    rng = np.random.default_rng(len(shape) + (axis or 0))
    w = rng.laplace(0, 0.05, shape).astype(np.float32)
    mask = rng.random(shape) > 0.6
    channel_steps = None
    if axis is not None:
        channel_steps = rng.uniform(0.001, 0.02, shape[axis]).astype(np.float32)
        channel_steps[0] = 0
    plan = LayerPlan("w", mask, 0.01, True, channel_steps=channel_steps, channel_axis=axis)
    step = plan.steps_for(shape)
    for keep, max_code in ((True, None), (False, 7)):
        codes = quantize_codes(w, mask, step, keep, max_code)
        assert codes.flags.c_contiguous
        np.testing.assert_array_equal(codes, _whole_codes(w, mask, step, keep, max_code))

    layer = type("L", (), {"name": "w", "op": "MatMul", "values": w, "axis": axis, "groups": 1})
    row = layer_row(layer, plan, codes.astype(np.int8), "int8", laplace_fit(w))
    assert row.mse == float(np.mean((dequantize(codes, step) - w).astype(np.float64) ** 2))
    a = np.abs(w.astype(np.float64).ravel())
    assert row.laplace_scale == float(a.mean())
    nz = (codes != 0).ravel()
    runs = np.diff(np.flatnonzero(nz), prepend=-1) - 1
    assert index_bits(nz, 3.5) == min([nz.size] + [int(np.ceil((nz.sum() + (runs >> r).sum()) * r
                                                               + (runs >> r).sum() * 3.5)) for r in range(1, 9)])


@pytest.mark.parametrize("shape, axis, groups", [((300, 400), 0, 1), ((300, 400), 1, 1), ((20, 48, 11, 13), 1, 1),
                                                 ((20, 48, 11, 13), 1, 4), ((70_001,), None, 1)])
def test_blocked_masks_and_channel_statistics_equal_the_whole_array_ones(shape, axis, groups):
    from onnxjpq.methods.opq import kept_channels, magnitude_mask
    from onnxjpq.core.quant import to_channels

    w = np.round(np.random.default_rng(5).laplace(0, 0.05, shape), 3).astype(np.float32)  # many ties
    for k in (1, w.size // 3, w.size - 1):
        reference = np.ones(w.size, bool)
        reference[np.argsort(np.abs(w).ravel(), kind="stable")[:k]] = False
        mask = magnitude_mask(w, k)
        np.testing.assert_array_equal(mask, reference.reshape(shape))
    a, m = to_channels(np.abs(w), axis, groups), to_channels(mask, axis, groups)
    kept = np.where(m, a, 0)
    stats = kept_channels(w, mask, axis, groups, threshold=0.02)
    np.testing.assert_array_equal(stats.alpha, kept.max(axis=1).astype(float))
    np.testing.assert_array_equal(stats.count, m.sum(axis=1))
    assert stats.below == int((np.abs(w) <= 0.02).sum())
    for t in (np.float64(0.01), np.float64(0.1)):
        np.testing.assert_array_equal(stats.at_least(t), (kept >= t).sum(axis=1))
