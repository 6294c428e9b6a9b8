"""Graph I/O: external data, path checks, atomic writes, lean imports."""

import subprocess
import sys

import numpy as np
import onnx
import pytest

from onnxjpq import ModelError, OpqConfig, OptionError, compress_file
from onnxjpq.graph.io import check_output_path, file_bytes, load_model, save_model
from onnxjpq.testing import conv_model, run


def _save_external(model: onnx.ModelProto, path, location: str) -> None:
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)


def test_external_data_is_loaded_and_compressed(tmp_path):
    expected = onnx.numpy_helper.to_array(conv_model().graph.initializer[0])
    src = tmp_path / "ext.onnx"
    _save_external(conv_model(), src, "ext.data")
    loaded = load_model(src)
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(loaded.graph.initializer[0]), expected)
    assert file_bytes(src) > src.stat().st_size
    report = compress_file(src, tmp_path / "out.onnx", OpqConfig(prune=0.5, bits=4))
    assert report["totals"]["bytes_in"] == file_bytes(src)
    x = {"x": np.ones((1, 3, 8, 8), np.float32)}
    assert run(str(tmp_path / "out.onnx"), x)[0].shape == (1, 8, 8, 8)


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    _save_external(conv_model(), inner / "m.onnx", "m.data")
    (inner / "m.data").rename(tmp_path / "m.data")
    model = onnx.load(str(inner / "m.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../m.data"
    onnx.save_model(model, str(inner / "m.onnx"))
    with pytest.raises(ModelError, match="leaves the model's folder"):
        load_model(inner / "m.onnx")


def test_missing_external_data_file_is_a_model_error(tmp_path):
    _save_external(conv_model(), tmp_path / "m.onnx", "m.data")
    (tmp_path / "m.data").unlink()
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "m.onnx")


def test_save_is_atomic_and_leaves_no_temporary_file(tmp_path):
    size = save_model(conv_model(), tmp_path / "a.onnx")
    assert size == (tmp_path / "a.onnx").stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == ["a.onnx"]


def test_output_equal_to_input_is_refused(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save_model(conv_model(), str(src))
    with pytest.raises(OptionError, match="is the input file"):
        check_output_path(src, tmp_path / "." / "m.onnx")


def test_import_onnxjpq_does_not_import_torch():
    code = "import sys, onnxjpq, onnxjpq.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _external_copy(tmp_path, edit) -> str:
    """conv_model saved with external data, its weight's header changed by `edit(tensor)`."""
    _save_external(conv_model(), tmp_path / "m.onnx", "m.data")
    model = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    edit(model.graph.initializer[0])
    onnx.save_model(model, str(tmp_path / "m.onnx"))
    return str(tmp_path / "m.onnx")


def _set_entry(tensor, key, value):
    for entry in tensor.external_data:
        if entry.key == key:
            entry.value = str(value)
            return
    entry = tensor.external_data.add()
    entry.key, entry.value = key, str(value)


def _assert_one_line_model_error(path, match, tmp_path):
    for call in (lambda: load_model(path), lambda: compress_file(path, tmp_path / "out.onnx", OpqConfig())):
        with pytest.raises(ModelError, match=match) as info:
            call()
        assert "\n" not in str(info.value)
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("edit, match", [
    (lambda t: _set_entry(t, "offset", 10**12), "run past the end"),
    (lambda t: _set_entry(t, "length", 8), "need 864 bytes, its external data holds 8"),
    (lambda t: (t.ClearField("dims"), t.dims.extend([10**6, 10**6, 10**6])), "need 4000000000000000000 bytes"),
    (lambda t: (t.ClearField("dims"), t.dims.extend([8, -3, 3, 3])), "negative dimension"),
    (lambda t: _set_entry(t, "offset", "x"), "bad external data entry"),
])
def test_hostile_external_data_headers_are_one_line_model_errors(tmp_path, edit, match):
    _assert_one_line_model_error(_external_copy(tmp_path, edit), match, tmp_path)


def test_absurd_dims_of_an_inline_tensor_are_a_model_error(tmp_path):
    model = conv_model()
    weight = model.graph.initializer[0]
    weight.ClearField("dims")
    weight.dims.extend([2**40, 2**20])
    onnx.save_model(model, str(tmp_path / "m.onnx"))
    _assert_one_line_model_error(tmp_path / "m.onnx", "need 4611686018427387904 bytes, it stores 864", tmp_path)


def test_typed_values_that_do_not_match_the_dims_are_a_model_error(tmp_path):
    model = conv_model()
    weight = model.graph.initializer[0]
    values = onnx.numpy_helper.to_array(weight).ravel()
    weight.ClearField("raw_data")
    weight.float_data.extend(values[:10].tolist())
    onnx.save_model(model, str(tmp_path / "m.onnx"))
    _assert_one_line_model_error(tmp_path / "m.onnx", "declare 216 values, it stores 10", tmp_path)


def _sparse_model(dims, indices) -> onnx.ModelProto:
    values = onnx.numpy_helper.from_array(np.ones(3, np.float32), "W")
    index = onnx.numpy_helper.from_array(np.array(indices, np.int64), "W_index")
    sparse = onnx.helper.make_sparse_tensor(values, index, dims)
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, dims[0]])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, dims[1]])
    graph = onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["x", "W"], ["y"])], "g", [x], [y],
                                   sparse_initializer=[sparse])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def test_sparse_tensor_too_large_to_densify_is_a_model_error(tmp_path):
    onnx.save_model(_sparse_model([10**6, 10**6], [0, 5, 9]), str(tmp_path / "m.onnx"))
    _assert_one_line_model_error(tmp_path / "m.onnx", "bytes dense, more than this machine's memory", tmp_path)


def test_sparse_indices_that_do_not_match_the_values_are_a_model_error(tmp_path):
    onnx.save_model(_sparse_model([4, 4], [0, 5]), str(tmp_path / "m.onnx"))
    _assert_one_line_model_error(tmp_path / "m.onnx", "3 values but indices of shape", tmp_path)


def test_valid_sparse_initializer_loads(tmp_path):
    onnx.save_model(_sparse_model([4, 4], [0, 5, 9]), str(tmp_path / "m.onnx"))
    assert len(load_model(tmp_path / "m.onnx").graph.sparse_initializer) == 1
