"""Fuzzing `onnxjpq compress` with broken ONNX files.

Valid tiny models are mutated at the byte level (flips, truncation) and at
the protobuf level (dims, dtypes, op types, attributes, inputs, opsets), and
the CLI runs in-process on each (compress in several modes, inspect; eval on
mutated .npz data files). Whatever the input, the run must end either
with status 0 and an output onnx.checker accepts, or with status 1 or 2 and a
single `error: ...` line: never an unhandled exception, never a partial
output, never a modified input. The examples are derandomized, so CI sees the
same cases on every run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxjpq.cli import main
from onnxjpq.testing import laplace

FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _model(text: str, weights: dict[str, np.ndarray], opset: int = 17) -> bytes:
    model = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : {opset}]>\n' + text)
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in weights.items())
    onnx.checker.check_model(model)
    return model.SerializeToString()


SEEDS = {
    "mlp": _model("""
agraph (float[2, 16] x) => (float[2, 4] y) {
    h1 = MatMul (x, W1)
    r1 = Relu (h1)
    h2 = Gemm <transB = 1> (r1, W2, b2)
    r2 = Relu (h2)
    y = MatMul (r2, W3)
}""", {"W1": laplace((16, 16), 0.1, 1), "W2": laplace((32, 16), 0.05, 2), "b2": np.zeros(32, np.float32),
       "W3": laplace((32, 4), 0.2, 3)}),
    "conv": _model("""
agraph (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) {
    c = Conv <pads = [1, 1, 1, 1]> (x, W)
    r = Relu (c)
    y = Conv (r, V)
}""", {"W": laplace((8, 3, 3, 3), 0.1, 4), "V": laplace((4, 8, 1, 1), 0.1, 5)}),
    "chain": _model("""
agraph (float[2, 16] x) => (float[2, 8] y) {
    wt = Transpose <perm = [1, 0]> (W)
    h = MatMul (x, wt)
    v = Reshape (V, shape)
    y = MatMul (h, v)
}""", {"W": laplace((8, 16), 0.1, 6), "V": laplace((64,), 0.1, 7), "shape": np.array([8, 8], np.int64)}),
    "branches": _model("""
agraph (float[2, 16] x, bool c) => (float[2, 8] y) {
    w16 = Cast <to = 1> (H)
    y = If (c) <then_branch = g1 () => (float[2, 8] a) { a = MatMul (x, W) },
                else_branch = g2 () => (float[2, 8] b) { b = Gemm (x, w16) }>
}""", {"W": laplace((16, 8), 0.1, 8), "H": laplace((16, 8), 0.1, 9).astype(np.float16)}),
    "constants": _model("""
agraph (float[1, 2, 8, 8] x) => (float[1, 4, 8, 8] y) {
    w = Constant <value = float[4, 2, 3, 3] {%s}> ()
    c = ConvTranspose <pads = [1, 1, 1, 1]> (x, W)
    y = Conv <pads = [1, 1, 1, 1]> (c, w)
}""" % ", ".join(f"{v:.3f}" for v in laplace((72,), 0.1, 10)), {"W": laplace((2, 4, 3, 3), 0.1, 11)}),
}

OP_TYPES = ["MatMul", "Gemm", "Conv", "ConvTranspose", "Relu", "Transpose", "Reshape", "Cast", "Gather",
            "Identity", "DequantizeLinear", "If", "Loop", "Scan", "Constant", "NoSuchOp", ""]
INTS = st.integers(min_value=-3, max_value=70000).filter(lambda v: v < 40 or v > 60000) | st.sampled_from(
    [0, 1, 2**31, -(2**40)])


# ------------------------------------------------------------------ mutations


def _flip(data: bytes, draw) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, len(out) - 1))
        out[i] ^= draw(st.integers(1, 255))
    return bytes(out)


def _truncate(data: bytes, draw) -> bytes:
    return data[:draw(st.integers(0, len(data) - 1))]


def _tensor_field(model: onnx.ModelProto, draw) -> None:
    if not model.graph.initializer:
        return
    tensor = draw(st.sampled_from(list(model.graph.initializer)))
    what = draw(st.sampled_from(["dim", "dtype", "drop_dim", "add_dim", "name", "raw"]))
    if what == "dim" and tensor.dims:
        tensor.dims[draw(st.integers(0, len(tensor.dims) - 1))] = draw(INTS)
    elif what == "dtype":
        tensor.data_type = draw(st.sampled_from(list(TensorProto.DataType.values()) + [0, 99]))
    elif what == "drop_dim" and tensor.dims:
        del tensor.dims[-1]
    elif what == "add_dim":
        tensor.dims.append(draw(st.integers(0, 3)))
    elif what == "name":
        tensor.name = draw(st.sampled_from(["", "x", "y", "W1", "missing"]))
    else:
        tensor.raw_data = tensor.raw_data[:draw(st.integers(0, max(len(tensor.raw_data) - 1, 0)))]


def _node_field(model: onnx.ModelProto, draw) -> None:
    if not model.graph.node:
        return
    node = draw(st.sampled_from(list(model.graph.node)))
    what = draw(st.sampled_from(["op", "drop_input", "bad_input", "extra_input", "attr", "domain", "drop_output"]))
    if what == "op":
        node.op_type = draw(st.sampled_from(OP_TYPES))
    elif what == "drop_input" and node.input:
        del node.input[draw(st.integers(0, len(node.input) - 1))]
    elif what == "bad_input" and node.input:
        node.input[draw(st.integers(0, len(node.input) - 1))] = draw(st.sampled_from(["", "nowhere", "y"]))
    elif what == "extra_input":
        node.input.append(draw(st.sampled_from(["x", "W1", "W", "nowhere", ""])))
    elif what == "attr":
        name = draw(st.sampled_from(["transA", "transB", "perm", "group", "pads", "axis", "to", "alpha",
                                     "kernel_shape", "strides", "allowzero"]))
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(kept)
        value = draw(st.one_of(INTS, st.lists(INTS, max_size=5), st.floats(allow_nan=True),
                               st.sampled_from(["text"])))
        node.attribute.append(helper.make_attribute(name, value) if value != [] else
                              helper.make_attribute(name, [], attr_type=onnx.AttributeProto.INTS))
    elif what == "domain":
        node.domain = draw(st.sampled_from(["com.foo", "ai.onnx.ml", "com.microsoft", "ai.onnx"]))
    elif what == "drop_output" and node.output:
        del node.output[:]


def _graph_field(model: onnx.ModelProto, draw) -> None:
    what = draw(st.sampled_from(["opset", "ir", "input_dim", "input_type", "drop_output", "drop_init",
                                 "dup_node", "drop_node", "swap_nodes", "drop_graph_input"]))
    graph = model.graph
    if what == "opset":
        model.opset_import[0].version = draw(st.integers(-1, 40))
    elif what == "ir":
        model.ir_version = draw(st.integers(-1, 20))
    elif what == "input_dim" and graph.input and graph.input[0].type.tensor_type.shape.dim:
        dims = graph.input[0].type.tensor_type.shape.dim
        dims[draw(st.integers(0, len(dims) - 1))].dim_value = draw(INTS)
    elif what == "input_type" and graph.input:
        graph.input[0].type.tensor_type.elem_type = draw(st.sampled_from([0, 2, 6, 7, 10, 11, 16, 40]))
    elif what == "drop_output":
        del graph.output[:]
    elif what == "drop_init" and graph.initializer:
        del graph.initializer[draw(st.integers(0, len(graph.initializer) - 1))]
    elif what == "dup_node":
        graph.node.append(graph.node[draw(st.integers(0, len(graph.node) - 1))])
    elif what == "drop_node" and len(graph.node) > 1:
        del graph.node[draw(st.integers(0, len(graph.node) - 1))]
    elif what == "swap_nodes" and len(graph.node) > 1:
        first = onnx.NodeProto()
        first.CopyFrom(graph.node[0])
        graph.node[0].CopyFrom(graph.node[-1])
        graph.node[-1].CopyFrom(first)
    elif what == "drop_graph_input":
        del graph.input[:]


@st.composite
def mutated_models(draw) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = SEEDS[name]
    kind = draw(st.sampled_from(["flip", "truncate", "proto", "proto", "proto", "proto"]))
    if kind == "flip":
        return name, _flip(data, draw)
    if kind == "truncate":
        return name, _truncate(data, draw)
    model = onnx.load_from_string(data)
    for _ in range(draw(st.integers(1, 3))):
        draw(st.sampled_from([_tensor_field, _node_field, _graph_field]))(model, draw)
    return name, model.SerializeToString()


# ------------------------------------------------------------------ the property


def assert_clean_run(data: bytes, options: list[str], command: str = "compress") -> None:
    """Run `command` on `data` in-process; it ends in a valid output or in one error line."""
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        src.write_bytes(data)
        args = ["compress", str(src), "-o", str(out), "-q"] if command == "compress" else [command, str(src)]
        result = CliRunner().invoke(main, [*args, *options])
        assert src.read_bytes() == data, "the input was modified"
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # an unhandled exception: its traceback is the bug report
        assert result.exit_code in (0, 1, 2), result.exit_code
        if result.exit_code == 0:
            if command == "compress":
                onnx.checker.check_model(onnx.load(str(out)))
        else:
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
            assert "Traceback" not in result.output
            assert not out.exists()
        assert not [p for p in Path(tmp).iterdir() if p.name not in ("in.onnx", "out.onnx")]


@settings(FUZZ, max_examples=800)
@given(mutated_models())
def test_mutated_models_compress_or_fail_with_one_line(case):
    _, data = case
    assert_clean_run(data, ["--prune", "0.3", "--bits", "6", "--keep", "none", "--min-params", "0"])


@settings(FUZZ, max_examples=200)
@given(mutated_models(), st.sampled_from([["--format", "float"], ["--format", "sparse"], ["--rate", "8"],
                                          ["--no-int4", "--granularity", "channel"]]))
def test_mutated_models_in_other_modes(case, options):
    _, data = case
    assert_clean_run(data, [*options, "--keep", "none", "--min-params", "0"])


@settings(FUZZ, max_examples=150)
@given(mutated_models())
def test_mutated_models_inspect_or_fail_with_one_line(case):
    _, data = case
    assert_clean_run(data, ["--json", "--min-params", "0"], command="inspect")


def _npz_seed() -> bytes:
    import io

    import zipfile

    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    arrays = {"x": rng.standard_normal((4, 16)).astype(np.float32), "labels": np.arange(4) % 4}
    with zipfile.ZipFile(buffer, "w") as archive:  # np.savez stamps the current time: fixed here
        for name, array in arrays.items():
            with archive.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w") as f:
                np.lib.format.write_array(f, array)
    return buffer.getvalue()


NPZ = _npz_seed()


@settings(FUZZ, max_examples=300)
@given(st.data())
def test_mutated_data_files_evaluate_or_fail_with_one_line(data):
    blob = data.draw(st.sampled_from([_flip, _truncate]))(NPZ, data.draw)
    with tempfile.TemporaryDirectory() as tmp:
        model, path = Path(tmp) / "m.onnx", Path(tmp) / "d.npz"
        model.write_bytes(SEEDS["mlp"])
        path.write_bytes(blob)
        result = CliRunner().invoke(main, ["eval", str(model), str(model), "--data", str(path), "--runs", "0", "-q"])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        assert result.exit_code in (0, 2)
        if result.exit_code:
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


# ================================================================== output paths (issue 15, item 1)
# Outputs that alias an input or another output: the same name written another way,
# through a symlink, a hard link or a symlinked folder, and the input's external
# data file. Every case must be refused before any work with one line and status 2,
# every input byte-identical and nothing new in the folder.

ALIAS_WAYS = ["name", "dot", "absolute", "updown", "symlink", "hardlink", "linked_folder"]


def _alias(folder: Path, target: str, way: str) -> str:
    """`target` (a name in `folder`) named another `way`; links are made here, before the run."""
    import os

    if way == "dot":
        return f"./{target}"
    if way == "absolute":
        return str(folder / target)
    if way == "updown":
        (folder / "sub").mkdir(exist_ok=True)
        return f"sub/../{target}"
    if way == "symlink":
        os.symlink(target, folder / f"link_{target}")
        return f"link_{target}"
    if way == "hardlink" and (folder / target).is_file():
        os.link(folder / target, folder / f"hard_{target}")
        return f"hard_{target}"
    if way == "linked_folder":
        os.symlink(".", folder / "here")
        return f"here/{target}"
    return target


@st.composite
def aliased_runs(draw) -> tuple[str, bool, str, str, str]:
    """(verb, external data?, output option, aliased target, way)."""
    verb = draw(st.sampled_from(["compress", "compress", "compress", "eval", "sensitivity"]))
    external = draw(st.booleans())
    inputs = ["in.onnx", "calib.npz"] + (["in.data"] if external else [])
    if verb == "compress":
        option = draw(st.sampled_from(["-o", "--report"]))
        targets = inputs + (["out.onnx", "out.onnx.data"] if option == "--report" else ["r.json"])
    else:
        option, targets = "--json", inputs + (["cand.onnx"] if verb == "eval" else [])
    return verb, external, option, draw(st.sampled_from(targets)), draw(st.sampled_from(ALIAS_WAYS))


def _snapshot_folder(folder: Path) -> dict[str, bytes | str]:
    return {p.name: ("link" if p.is_symlink() or p.is_dir() else p.read_bytes()) for p in sorted(folder.iterdir())}


@settings(FUZZ, max_examples=120)
@given(aliased_runs())
def test_outputs_aliasing_inputs_or_each_other_are_refused_and_touch_nothing(case):
    import contextlib

    verb, external, option, target, way = case
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        folder = Path(tmp)
        model = onnx.load_from_string(SEEDS["mlp"])
        if external:
            onnx.save_model(model, "in.onnx", save_as_external_data=True, location="in.data", size_threshold=0)
        else:
            onnx.save_model(model, "in.onnx")
        (folder / "cand.onnx").write_bytes(SEEDS["mlp"])
        (folder / "calib.npz").write_bytes(NPZ)
        alias = _alias(folder, target, way)
        if verb == "compress":
            paths = {"-o": "out.onnx", "--report": "r.json", option: alias}
            args = ["compress", "in.onnx", "-o", paths["-o"], "--report", paths["--report"], "--rate", "8",
                    "--calib", "calib.npz", "--keep", "none", "--min-params", "0", "-q"]
        elif verb == "eval":
            args = ["eval", "in.onnx", "cand.onnx", "--data", "calib.npz", "--runs", "0", "--json", alias, "-q"]
        else:
            args = ["sensitivity", "in.onnx", "--data", "calib.npz", "--json", alias, "-q"]
        before = _snapshot_folder(folder)
        result = CliRunner().invoke(main, args)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2, (args, result.output)
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert "choose another path" in lines[0] or "give each output its own path" in lines[0], lines[0]
        assert _snapshot_folder(folder) == before, "an input changed or something was written"
# ================================================================== end of the output-path block


# ================================================================== data files and entry points (issue 15)
# Hostile data for every verb that reads it: .npz headers declaring absurd sizes,
# FIFOs, devices and folders, NaN/Inf samples, `module:function` entry points that
# misbehave. Each run ends in status 0 or one `error: ...` line (status 1 or 2), never
# a traceback or a hang; the data file is byte-identical after it and nothing is left.


def _data_commands(data: str, out: Path) -> dict[str, list[str]]:
    return {"eval": ["eval", "m.onnx", "m.onnx", "--data", data, "--runs", "0", "-q"],
            "calib": ["compress", "m.onnx", "-o", str(out), "--rate", "8", "--calib", data, "--min-params", "0",
                      "-q"],
            "max-drop": ["compress", "m.onnx", "-o", str(out), "--max-drop", "5", "--data", data, "--min-params",
                         "0", "-q"],
            "sensitivity": ["sensitivity", "m.onnx", "--data", data, "--min-params", "0", "-q"]}


def _assert_clean_data_run(folder: Path, args: list[str], expect_error: bool = False, seconds: int = 60) -> None:
    """Run `args` in `folder`; one clean ending, the inputs unchanged, nothing new left behind."""
    import contextlib
    import signal

    def hung(*_):
        raise TimeoutError(f"{args} ran past {seconds} s")

    before = {p.name: p.read_bytes() if p.is_file() else None for p in folder.iterdir()}
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        with contextlib.chdir(folder):
            result = CliRunner().invoke(main, args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code in ((1, 2) if expect_error else (0, 1, 2)), (args, result.output)
    if result.exit_code:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.stderr)
    assert "Traceback" not in result.output
    after = {p.name: p.read_bytes() if p.is_file() else None for p in folder.iterdir()}
    new = set(after) - set(before) - ({"out.onnx"} if result.exit_code == 0 else set())
    assert not new, f"{args} left {sorted(new)}"
    assert {k: after[k] for k in before} == before, "an input was modified"


def _npy_bytes(shape, descr: str, fortran: bool, version: tuple[int, int], payload: bytes) -> bytes:
    import struct

    header = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {tuple(shape)}, }}"
    length = "<H" if version == (1, 0) else "<I"
    size = 10 if version == (1, 0) else 12
    header += " " * (-(len(header) + size + 1) % 64) + "\n"
    return b"\x93NUMPY" + bytes(version) + struct.pack(length, len(header)) + header.encode() + payload


@st.composite
def header_bombs(draw) -> bytes:
    """An .npz whose members declare shapes (often huge), dtypes and sizes the bytes do not back."""
    import io
    import struct
    import zipfile

    dims = st.one_of(st.integers(0, 8), st.integers(2**20, 2**62), st.sampled_from([-1, 2**63, 2**64, 16]))
    members = {}
    for name in draw(st.lists(st.sampled_from(["x", "labels", "y", "other"]), min_size=1, max_size=3, unique=True)):
        shape = draw(st.lists(dims, max_size=4))
        descr = draw(st.sampled_from(["<f4", ">f4", "<f8", "|u1", "<i8", "|O", "<U8", "|V0", "<c8", "|b1", "x9"]))
        version = draw(st.sampled_from([(1, 0), (2, 0), (3, 0)]))
        members[name] = _npy_bytes(shape, descr, draw(st.booleans()), version, draw(st.binary(max_size=200)))
    if draw(st.booleans()):  # a valid input beside the bombs, so that the labels are read too
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.zeros((4, 16), np.float32))
        members["x"] = buffer.getvalue()
    method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, blob in members.items():
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), blob, method)
    blob = bytearray(buffer.getvalue())
    if draw(st.booleans()):  # forge the first member's uncompressed size, in its header and the directory
        size = draw(st.sampled_from([0, 1, 2**20, 2**31, 2**32 - 1]))
        struct.pack_into("<I", blob, 22, size)
        struct.pack_into("<I", blob, blob.index(b"PK\x01\x02") + 24, size)
    return bytes(blob)


@settings(FUZZ, max_examples=200)
@given(header_bombs(), st.sampled_from(["eval", "eval", "calib", "max-drop", "sensitivity"]))
def test_npz_header_bombs_are_refused_before_allocating(blob, command):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "m.onnx").write_bytes(SEEDS["mlp"])
        (folder / "d.npz").write_bytes(blob)
        _assert_clean_data_run(folder, _data_commands("d.npz", folder / "out.onnx")[command])


@st.composite
def non_finite_data(draw) -> bytes:
    import io

    n = draw(st.sampled_from([2, 4, 6]))
    x = np.random.default_rng(draw(st.integers(0, 99))).standard_normal((n, 16)).astype(np.float32)
    for _ in range(draw(st.integers(1, 5))):
        x[draw(st.integers(0, n - 1)), draw(st.integers(0, 15))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    if draw(st.booleans()):
        x[:] = draw(st.sampled_from([np.nan, np.inf]))
    arrays = {"x": x}
    if draw(st.booleans()):
        arrays[draw(st.sampled_from(["labels", "y", "target"]))] = np.arange(n) % 4
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@settings(FUZZ, max_examples=60)
@given(non_finite_data(), st.sampled_from(["eval", "calib", "max-drop", "sensitivity", "activations"]))
def test_non_finite_data_is_refused_in_every_mode(blob, command):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "m.onnx").write_bytes(SEEDS["mlp"])
        (folder / "d.npz").write_bytes(blob)
        commands = _data_commands("d.npz", folder / "out.onnx")
        commands["activations"] = commands["calib"] + ["--activations", "int8"]
        _assert_clean_data_run(folder, commands[command], expect_error=True)
        assert not (folder / "out.onnx").exists()


@settings(FUZZ, max_examples=12)
@given(st.sampled_from(["fifo", "fifo_link", "dev_zero", "dev_null", "folder", "socket"]),
       st.sampled_from(["eval", "calib", "max-drop", "sensitivity", "finetune_val"]))
def test_non_regular_data_files_are_refused_without_blocking(kind, command):
    import os
    import socket

    if kind == "folder" and command in ("calib", "max-drop", "finetune_val"):
        return  # click's own dir_okay=False check answers these with its usage text
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "m.onnx").write_bytes(SEEDS["mlp"])
        data, server = {"dev_zero": "/dev/zero", "dev_null": "/dev/null", "folder": "."}.get(kind, "d.npz"), None
        if kind.startswith("fifo"):
            os.mkfifo(folder / "pipe")
            os.symlink("pipe", folder / "d.npz") if kind == "fifo_link" else os.rename(folder / "pipe", folder / "d.npz")
        elif kind == "socket":
            server = socket.socket(socket.AF_UNIX)
            server.bind(str(folder / "d.npz"))
        commands = _data_commands(data, folder / "out.onnx")
        (folder / "train.npz").write_bytes(NPZ)
        commands["finetune_val"] = ["finetune", "m.onnx", "-o", "out.onnx", "--data", "train.npz", "--val", data,
                                    "--epochs", "1", "--prune", "0.5", "--bits", "4", "-q"]
        try:
            _assert_clean_data_run(folder, commands[command], expect_error=True, seconds=30)
        finally:
            if server is not None:
                server.close()


_ITEMS = ["ok", "ok", "nan", "inf", "ragged", "objects", "wrong_key", "not_dict", "float64", "scalar", "labels",
          "raise", "exit", "stop"]
_RAISES = ["ValueError('bad')", "KeyError('k')", "RuntimeError()", "MemoryError()", "RecursionError('deep')",
           "ZeroDivisionError('x')", "AssertionError()", "OSError(5, 'io')", "SystemExit(0)", "SystemExit(3)",
           "SystemExit('quit')", "SystemExit(None)", "StopIteration()", "Exception('\\n\\nmultiline\\n')"]


def _item_code(kind: str, draw) -> str:
    """A statement producing `item` (or failing) in the generated entry point."""
    return {"ok": "item = {'x': np.zeros((2, 16), np.float32)}",
            "nan": "item = {'x': np.full((2, 16), np.nan, np.float32)}",
            "inf": "item = {'x': np.array([[0.0] * 15 + [np.inf]] * 2, np.float32)}",
            "ragged": "item = {'x': [[0.0] * 16, [0.0] * 15]}",
            "objects": "item = {'x': np.array([None, 1.0], dtype=object)}",
            "wrong_key": "item = {'image': np.zeros((2, 16), np.float32)}",
            "not_dict": f"item = {draw(st.sampled_from(['None', '3', 'np.zeros(2)', 'object()', '[1, 2]']))}",
            "float64": "item = {'x': np.zeros((2, 16))}",
            "scalar": "item = {'x': np.float32(1.0)}",
            "labels": "item = {'x': np.zeros((2, 16), np.float32), 'y': np.array([1, 2])}",
            "raise": f"raise {draw(st.sampled_from(_RAISES))}",
            "exit": f"sys.exit({draw(st.sampled_from(['0', '1', 'None', repr('bye')]))})",
            "stop": "return"}[kind]


_MODULES = iter(range(10**6))


@st.composite
def entry_points(draw) -> str:
    """The source of a module `f` whose function yields, returns or fails in drawn ways."""
    head = draw(st.sampled_from([""] * 8 + ["def broken(:\n", "sys.exit(0)\n", "raise ImportError('no')\n",
                                            "import no_such_module_15\n"]))
    items = draw(st.lists(st.sampled_from(_ITEMS), max_size=4))
    style = draw(st.sampled_from(["yield", "list", "dict", "none", "raise_first"]))
    lines = ["import sys", "import numpy as np", head, "def f():"]
    if style == "raise_first":
        lines.append(f"    raise {draw(st.sampled_from(_RAISES))}")
    elif style == "none":
        lines.append("    return None")
    elif style == "dict":
        lines += ["    " + _item_code(items[0] if items else "ok", draw), "    return item"]
    else:
        lines += ["    out = []"] if style == "list" else []
        for kind in items:
            lines += ["    " + _item_code(kind, draw), "    " + ("out.append(item)" if style == "list" else "yield item")]
        lines += ["    return out"] if style == "list" else ["    return", "    yield"]
    return "\n".join(lines) + "\n"


@settings(FUZZ, max_examples=150)
@given(entry_points(), st.sampled_from(["eval", "eval", "sensitivity"]))
def test_misbehaving_entry_points_end_in_one_line_naming_them(source, command):
    import sys

    name = f"fuzz_feed_{next(_MODULES)}"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "m.onnx").write_bytes(SEEDS["mlp"])
        (folder / f"{name}.py").write_text(source)
        json_out = ["--json", "r.json"]
        args = _data_commands(f"{name}:f", folder / "out.onnx")[command] + json_out
        sys.path.insert(0, tmp)
        try:
            result_ok = _clean_entry_run(folder, args, name)
        finally:
            sys.path.remove(tmp)
            sys.modules.pop(name, None)
        assert result_ok


def _clean_entry_run(folder: Path, args: list[str], name: str) -> bool:
    """The run is clean; a failure names the entry point; the JSON exists exactly when it exits 0."""
    import contextlib

    with contextlib.chdir(folder):
        result = CliRunner().invoke(main, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code in (0, 1, 2), (args, result.output)
    assert "Traceback" not in result.output
    assert (folder / "r.json").exists() == (result.exit_code != 2), (result.exit_code, result.output)
    if result.exit_code == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: --data {name}:f"), result.stderr
    leftovers = {p.name for p in folder.iterdir()} - {"m.onnx", f"{name}.py", "r.json", "__pycache__"}
    assert not leftovers, leftovers
    return True
# ================================================================== end of the data-file block
