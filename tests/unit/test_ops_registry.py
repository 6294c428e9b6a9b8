"""The op registry is the one place per-op facts live."""

from onnxjpq.graph.ops import MACS_RULES, WEIGHT_SLOTS, weight_ops_text, weight_slot


def test_every_slot_names_a_known_macs_rule():
    assert {spec.macs for spec in WEIGHT_SLOTS} <= set(MACS_RULES)


def test_the_nothing_to_compress_message_lists_every_weight_op_of_the_registry():
    text = weight_ops_text()
    assert all(spec.op in text for spec in WEIGHT_SLOTS if not spec.embedding)
    assert "Gather" not in text


def test_channel_axes_and_bias_inputs_follow_the_attributes():
    assert weight_slot("Gemm", 1).out_axis({"transB": 1}, 2) == 0
    assert weight_slot("Gemm", 1).in_axis({"transB": 1}, 2) == 1
    assert weight_slot("Gemm", 1).in_axis({}, 2) == 0
    assert weight_slot("Conv", 1).in_axis({"group": 4}, 4) is None
    assert weight_slot("Conv", 1).bias_input == 2 and weight_slot("MatMul", 1).bias_input is None
    assert weight_slot("MatMul", 1).in_axis({}, 3) is None
    assert weight_slot("ConvTranspose", 1).macs == "input" and weight_slot("LSTM", 2).macs == "recurrent"
