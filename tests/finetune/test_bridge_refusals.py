"""What the bridge cannot run is refused when it is built, in one line naming it: never mid-training."""

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

torch = pytest.importorskip("torch")

from onnxjpq import ModelError  # noqa: E402
from onnxjpq.finetune.bridge import OnnxModule  # noqa: E402
from onnxjpq.testing import make_model  # noqa: E402

MODELS = Path(__file__).resolve().parents[2] / "models"


def _refusal(model: onnx.ModelProto) -> str:
    with pytest.raises(ModelError) as info:
        OnnxModule(model)
    message = str(info.value)
    assert "\n" not in message and message.startswith("fine-tuning cannot run ")
    return message


def _model(nodes, inputs, outputs, opset: int = 17, **kw) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, **kw)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   helper.make_opsetid("com.microsoft", 1)])


def _tensor(name: str, elem=TensorProto.FLOAT, shape=(1, 4)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def test_every_missing_op_is_named_once_in_one_message_even_inside_subgraphs():
    body = helper.make_graph([helper.make_node("Hardmax", ["x"], ["z"]),
                              helper.make_node("TfIdfVectorizer", ["z"], ["u"])], "then", [], [_tensor("u")])
    other = helper.make_graph([helper.make_node("Relu", ["x"], ["r"])], "else", [], [_tensor("r")])
    nodes = [helper.make_node("If", ["c"], ["y"], then_branch=body, else_branch=other),
             helper.make_node("Hardmax", ["y"], ["w"]),
             helper.make_node("FusedConv", ["w"], ["v"], domain="com.microsoft")]
    model = _model(nodes, [_tensor("c", TensorProto.BOOL, ()), _tensor("x")], [_tensor("v")])
    assert _refusal(model) == "fine-tuning cannot run ops Hardmax, TfIdfVectorizer, com.microsoft.FusedConv"


def test_an_attribute_the_registry_cannot_honour_is_named_with_the_op():
    nodes = [helper.make_node("Pad", ["x", "p"], ["y"], mode="mirror"),
             helper.make_node("Resize", ["y", "", "s"], ["z"], mode="area"),
             helper.make_node("Conv", ["z", "w"], ["v"], auto_pad="MAGIC")]
    inits = [helper.make_tensor("p", TensorProto.INT64, [4], [0, 1, 0, 1]),
             helper.make_tensor("s", TensorProto.FLOAT, [2], [1, 1]),
             helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 1], [1])]
    message = _refusal(_model(nodes, [_tensor("x", shape=(1, 1, 4))], [_tensor("v")], initializer=inits))
    assert message == ("fine-tuning cannot run Conv with auto_pad 'MAGIC'; Pad with mode 'mirror'; "
                       "Resize with mode 'area'")


def test_tensor_types_torch_lacks_are_refused_by_name():
    model = make_model("""
    agraph (float[4] x) => (string[4] y) {
        y = Cast <to = 8> (x)
    }""", {})
    assert _refusal(model) == "fine-tuning cannot run STRING tensors (torch has no such dtype)"
    seq = _model([helper.make_node("SequenceConstruct", ["x"], ["s"])], [_tensor("x")],
                 [helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, [1, 4])])
    assert _refusal(seq) == ("fine-tuning cannot run op SequenceConstruct; "
                             "sequence values (the bridge runs tensors only)")


def test_the_finetune_command_refuses_an_unsupported_model_in_one_line_before_training(tmp_path):
    model = onnx.load(MODELS / "lenet300.onnx")
    out = model.graph.output[0].name
    model.graph.node.append(helper.make_node("Hardmax", [out], ["hard"]))
    model.graph.output[0].name = "hard"
    path = tmp_path / "hardmax.onnx"
    onnx.save(model, path)
    result = subprocess.run([sys.executable, "-m", "onnxjpq", "finetune", str(path), "-o", str(tmp_path / "o.onnx"),
                             "--data", str(MODELS / "lenet300_train.npz"), "--epochs", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: fine-tuning cannot run op Hardmax"
    assert "Traceback" not in result.stderr and "loss" not in result.stderr + result.stdout
    assert not (tmp_path / "o.onnx").exists() and not (tmp_path / "o.onnx.ckpt").exists()
