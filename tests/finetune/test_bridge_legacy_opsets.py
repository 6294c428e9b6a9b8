"""Older opsets' forms of ops (attributes that later became inputs, other defaults) match onnxruntime.

onnx's backend node tests use each op's newest version; these models use the
older ones real exports still carry.
"""

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from onnxjpq.finetune.bridge import OnnxModule  # noqa: E402
from onnxjpq.testing import run  # noqa: E402

X = "float[2, 3, 4, 5] x"
CASES = {
    "softmax_11_flattens_from_axis": (11, f"({X}) => (float y) {{ y = Softmax <axis = 2> (x) }}"),
    "softmax_11_default_axis_1": (11, f"({X}) => (float y) {{ y = Softmax (x) }}"),
    "log_softmax_12": (12, f"({X}) => (float y) {{ y = LogSoftmax <axis = -2> (x) }}"),
    "slice_9_attributes": (9, f"({X}) => (float y) {{"
                              f" y = Slice <starts = [1, -3], ends = [3, 100], axes = [1, 3]> (x) }}"),
    "split_11_attribute": (11, f"({X}) => (float a, float b) {{ a, b = Split <axis = 3, split = [2, 3]> (x) }}"),
    "split_11_equal": (11, f"({X}) => (float a, float b) {{ a, b = Split <axis = 0> (x) }}"),
    "clip_6_attributes": (6, f"({X}) => (float y) {{ y = Clip <min = -0.5, max = 0.25> (x) }}"),
    "pad_2_reflect": (2, f"({X}) => (float y) {{ y = Pad <pads = [0, 0, 1, 2, 0, 0, 2, 1], mode = \"reflect\"> (x) }}"),
    "pad_2_constant_value": (2, f"({X}) => (float y) {{ y = Pad <pads = [0, 1, 0, 0, 0, 0, 1, 1], value = 1.5> (x) }}"),
    "reduce_sum_11_axes": (11, f"({X}) => (float y) {{ y = ReduceSum <axes = [1, -1], keepdims = 0> (x) }}"),
    "reduce_mean_13_axes": (13, f"({X}) => (float y) {{ y = ReduceMean <axes = [2]> (x) }}"),
    "reduce_max_11_all": (11, f"({X}) => (float y) {{ y = ReduceMax <keepdims = 0> (x) }}"),
    "squeeze_11_axes": (11, "(float[2, 1, 4, 1] x) => (float y) { y = Squeeze <axes = [1, -1]> (x) }"),
    "unsqueeze_11_axes": (11, f"({X}) => (float y) {{ y = Unsqueeze <axes = [0, -1]> (x) }}"),
    "topk_1_attribute": (1, f"({X}) => (float v, int64 i) {{ v, i = TopK <k = 2> (x) }}"),
    "upsample_7_nearest": (7, f"({X}) => (float y) {{ y = Upsample <scales = [1.0, 1.0, 2.0, 3.0]> (x) }}"),
    "upsample_9_linear": (9, f"""({X}) => (float y) {{
        s = Constant <value = float[4] {{1, 1, 2, 2}}> ()
        y = Upsample <mode = "linear"> (x, s) }}"""),
    "resize_10_nearest": (10, f"""({X}) => (float y) {{
        s = Constant <value = float[4] {{1, 1, 2, 1.5}}> ()
        y = Resize (x, s) }}"""),
    "resize_10_linear": (10, f"""({X}) => (float y) {{
        s = Constant <value = float[4] {{1, 1, 2, 2}}> ()
        y = Resize <mode = "linear"> (x, s) }}"""),
    "resize_11_half_pixel_linear": (11, f"""({X}) => (float y) {{
        r = Constant <value = float[0] {{}}> ()
        s = Constant <value = float[4] {{1, 1, 1.5, 0.5}}> ()
        y = Resize <mode = "linear"> (x, r, s) }}"""),
    "resize_13_sizes_cubic": (13, f"""({X}) => (float y) {{
        n = Constant <value = int64[4] {{2, 3, 7, 3}}> ()
        y = Resize <mode = "cubic"> (x, , , n) }}"""),
    "dropout_7_ratio": (7, f"({X}) => (float y) {{ y = Dropout <ratio = 0.3> (x) }}"),
    "dropout_10_mask": (10, f"({X}) => (float y, bool m) {{ y, m = Dropout (x) }}"),
    "batchnorm_7": (7, f"""({X}, float[3] s, float[3] b, float[3] m, float[3] v) => (float y) {{
        y = BatchNormalization <epsilon = 0.001> (x, s, b, m, v) }}"""),
    "flatten_9_axis_0": (9, f"({X}) => (float y) {{ y = Flatten <axis = 0> (x) }}"),
    "gemm_7_broadcast_c": (7, "(float[4, 3] a, float[5, 3] b, float[5] c) => (float y) {"
                              " y = Gemm <transB = 1, alpha = 2.0, beta = 0.5> (a, b, c) }"),
    "argmax_11": (11, f"({X}) => (int64 y) {{ y = ArgMax <axis = -1, keepdims = 0> (x) }}"),
    "cumsum_11_reverse": (11, f"""({X}) => (float y) {{
        a = Constant <value = int64 {{2}}> ()
        y = CumSum <reverse = 1> (x, a) }}"""),
    "scatter_9": (9, "(float[3, 4] x, int64[2, 4] i, float[2, 4] u) => (float y) { y = Scatter <axis = 0> (x, i, u) }"),
    "conv_transpose_11_auto_pad": (11, "(float[1, 2, 4, 4] x, float[2, 3, 3, 3] w) => (float y) {"
                                       " y = ConvTranspose <strides = [2, 2], auto_pad = \"SAME_UPPER\"> (x, w) }"),
    "maxpool_8_indices": (8, f"({X}) => (float y, int64 i) {{"
                             f" y, i = MaxPool <kernel_shape = [2, 2], strides = [2, 2], storage_order = 1> (x) }}"),
    "averagepool_10_ceil": (10, f"({X}) => (float y) {{"
                                f" y = AveragePool <kernel_shape = [3, 3], strides = [2, 2], ceil_mode = 1> (x) }}"),
}
# onnxruntime's inference-mode Dropout-10 returns an all-False mask; onnx's reference (and the mask's
# meaning, the kept elements) say all True: compared with onnx's reference evaluator instead.
BY_REFERENCE = {"dropout_10_mask"}


def _feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for value in model.graph.input:
        t = value.type.tensor_type
        shape = [d.dim_value for d in t.shape.dim]
        if t.elem_type == onnx.TensorProto.INT64:
            feeds[value.name] = rng.integers(0, 3, size=shape).astype(np.int64)
        else:
            feeds[value.name] = rng.normal(size=shape).astype(np.float32)
    if "v" in feeds:
        feeds["v"] = np.abs(feeds["v"]) + 0.1
    return feeds


@pytest.mark.parametrize("case", sorted(CASES))
def test_legacy_form_matches_onnxruntime(case):
    opset, text = CASES[case]
    model = onnx.parser.parse_model(f'<ir_version: 7, opset_import: ["" : {opset}]>\nagraph {text}')
    feeds = _feeds(model)
    module = OnnxModule(model)
    with torch.no_grad():
        got = module(*[torch.from_numpy(feeds[n]) for n in module.input_names])
    if case in BY_REFERENCE:
        from onnx.reference import ReferenceEvaluator

        expected = ReferenceEvaluator(model).run(None, feeds)
    else:
        expected = run(model, feeds)
    for have, want in zip(got, expected, strict=True):
        assert have.numpy().dtype == want.dtype and have.shape == want.shape
        np.testing.assert_allclose(have.numpy(), want, rtol=1e-5, atol=1e-5)
