"""Gradients through the bridge: torch.autograd.gradcheck in float64 on one model per differentiable op family.

Every float input (weights included, passed as graph inputs) is checked, every
float output compared; the values are random normals, which keeps them away
from the kinks of Relu, Max and the like.
"""

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from onnxjpq.finetune.bridge import OnnxModule  # noqa: E402


def _rand(rng, *shape, positive=False):
    x = rng.normal(size=shape)
    return np.abs(x) + 0.5 if positive else x


def _cases(rng):
    """id -> (graph text, inputs by name)."""
    r = lambda *s, **k: _rand(rng, *s, **k)  # noqa: E731
    ints = lambda *v: np.array(v, np.int64)  # noqa: E731
    return {
        "elementwise": ("""(double[2,3] a, double[2,3] b, double[3] c, bool[2,3] m) => (double[2,3] y) {
            sa = Sin (a)
            e = Exp (sa)
            eb = Mul (e, b)
            ab = Abs (b)
            rb = Sqrt (ab)
            den = Add (rb, c)
            q = Div (eb, den)
            ta = Tanh (a)
            p = Pow (ab, ta)
            eq = Erf (q)
            lc = Log (c)
            s = Sub (eq, lc)
            aa = Abs (a)
            ac = Add (aa, c)
            inv = Reciprocal (ac)
            ni = Neg (inv)
            w = Where (m, p, ni)
            hi = Max (a, b)
            lo = Min (b, c)
            sm = Sum (a, c)
            mn = Mean (hi, lo, sm)
            y = Sum (s, w, mn)
        }""", {"a": r(2, 3), "b": r(2, 3), "c": r(3, positive=True), "m": rng.random((2, 3)) > 0.5}),
        "activations": ("""(double[2,5] x, double[5] slope) => (double[2,5] y) {
            a = Gelu <approximate = "tanh"> (x)
            b = Mish (x)
            c = Selu (x)
            d = Celu <alpha = 0.7> (x)
            e = HardSwish (x)
            f = Softplus (x)
            g = Softsign (x)
            h = PRelu (x, slope)
            i = LeakyRelu <alpha = 0.2> (x)
            j = Elu (x)
            k = HardSigmoid (x)
            l = Gelu (x)
            rl = Relu (x)
            m = Sigmoid (rl)
            lo = Constant <value = double {-0.5}> ()
            n = Clip (x, lo)
            o = ThresholdedRelu <alpha = 0.1> (x)
            y = Sum (a, b, c, d, e, f, g, h, i, j, k, l, m, n, o)
        }""", {"x": r(2, 5), "slope": r(5)}),
        "reductions": ("""(double[2,3,4] x) => (double[3] y) {
            ax = Constant <value = int64[2] {0, 2}> ()
            a = ReduceSum <keepdims = 0> (x, ax)
            b = ReduceL2 <keepdims = 0> (x, ax)
            c = ReduceLogSumExp <keepdims = 0> (x, ax)
            d = ReduceProd <keepdims = 0> (x, ax)
            e = ReduceMax <keepdims = 0> (x, ax)
            f = ReduceSumSquare <keepdims = 0> (x, ax)
            g = ReduceL1 <keepdims = 0> (x, ax)
            h = ReduceMean <keepdims = 0> (x, ax)
            one = Constant <value = int64 {1}> ()
            cs = CumSum <exclusive = 1, reverse = 1> (x, one)
            k = ReduceSum <keepdims = 0> (cs, ax)
            sm = Softmax <axis = 1> (x)
            ls = LogSoftmax (x)
            both = Add (sm, ls)
            t = ReduceSum <keepdims = 0> (both, ax)
            y = Sum (a, b, c, d, e, f, g, h, k, t)
        }""", {"x": r(2, 3, 4)}),
        "conv": ("""(double[1,4,6,5] x, double[4,2,3,2] w, double[4] b) => (double y) {
            y = Conv <pads = [1, 0, 0, 1], strides = [2, 1], dilations = [1, 2], group = 2> (x, w, b)
        }""", {"x": r(1, 4, 6, 5), "w": r(4, 2, 3, 2), "b": r(4)}),
        "conv_1d_same": ("""(double[2,2,7] x, double[3,2,3] w) => (double y) {
            y = Conv <auto_pad = "SAME_UPPER", strides = [2]> (x, w)
        }""", {"x": r(2, 2, 7), "w": r(3, 2, 3)}),
        "conv_transpose": ("""(double[1,2,3,3] x, double[2,3,3,2] w, double[3] b) => (double y) {
            y = ConvTranspose <strides = [2, 3], pads = [1, 0, 0, 1], output_padding = [1, 2]> (x, w, b)
        }""", {"x": r(1, 2, 3, 3), "w": r(2, 3, 3, 2), "b": r(3)}),
        "conv_transpose_3d_shape": ("""(double[1,2,2,2,2] x, double[2,1,2,2,2] w) => (double y) {
            y = ConvTranspose <strides = [2, 2, 1], output_shape = [5, 4, 3]> (x, w)
        }""", {"x": r(1, 2, 2, 2, 2), "w": r(2, 1, 2, 2, 2)}),
        "pooling": ("""(double[1,2,7,6] x) => (double a, double m, double l, double g) {
            a = AveragePool <kernel_shape = [3, 2], strides = [2, 2], pads = [1, 0, 1, 1], ceil_mode = 1,
                             count_include_pad = 1, dilations = [1, 2]> (x)
            m = MaxPool <kernel_shape = [2, 2], strides = [2, 1], dilations = [2, 1], pads = [0, 1, 1, 0]> (x)
            l = LpPool <kernel_shape = [3, 3], p = 3> (x)
            g = GlobalAveragePool (x)
        }""", {"x": r(1, 2, 7, 6)}),
        "normalisation": ("""(double[2,4,3] x, double[4] s, double[4] b, double[4] mean, double[4] var,
                              double[4,3] g) => (double bn, double inn, double ln, double lm, double lv, double gn) {
            bn = BatchNormalization <epsilon = 0.01> (x, s, b, mean, var)
            inn = InstanceNormalization (x, s, b)
            ln, lm, lv = LayerNormalization <axis = 1> (x, g)
            gn = GroupNormalization <num_groups = 2> (x, s, b)
        }""", {"x": r(2, 4, 3), "s": r(4), "b": r(4), "mean": r(4), "var": r(4, positive=True), "g": r(4, 3)}),
        "resize": ("""(double[1,1,4,5] x) => (double a, double b, double c) {
            s = Constant <value = float[4] {1, 1, 2, 1.5}> ()
            d = Constant <value = float[4] {1, 1, 0.6, 0.5}> ()
            a = Resize <mode = "linear", coordinate_transformation_mode = "align_corners"> (x, , s)
            b = Resize <mode = "cubic", antialias = 1> (x, , d)
            c = Resize <mode = "nearest"> (x, , s)
        }""", {"x": r(1, 1, 4, 5)}),
        "gather_scatter": ("""(double[4,3] x, double[2,3] u, int64[2] i, int64[2,3] j, int64[2,1] k)
                              => (double a, double b, double c, double d, double e, double f) {
            a = Gather (x, i)
            b = GatherElements <axis = 0> (x, j)
            c = GatherND (x, k)
            d = ScatterND <reduction = "add"> (x, k, u)
            e = ScatterElements <axis = 0> (x, j, u)
            pads = Constant <value = int64[4] {1, 0, 2, 1}> ()
            f = Pad <mode = "reflect"> (x, pads)
        }""", {"x": r(4, 3), "u": r(2, 3), "i": ints(3, -4), "j": ints([1, 0, 3], [2, 3, 0]), "k": ints([2], [0])}),
        "lstm": ("""(double[3,2,3] x, double[2,8,3] w, double[2,8,2] r, double[2,16] b, int32[2] n,
                     double[2,2,2] h0, double[2,2,2] c0, double[2,6] p) => (double y, double yh, double yc) {
            y, yh, yc = LSTM <hidden_size = 2, direction = "bidirectional"> (x, w, r, b, n, h0, c0, p)
        }""", {"x": r(3, 2, 3), "w": r(2, 8, 3), "r": r(2, 8, 2), "b": r(2, 16), "n": np.array([3, 2], np.int32),
               "h0": r(2, 2, 2), "c0": r(2, 2, 2), "p": r(2, 6)}),
        "gru_rnn": ("""(double[2,3,3] x, double[1,6,3] w, double[1,6,2] r, double[1,12] b,
                        double[1,2,3] v, double[1,2,2] q) => (double y, double z) {
            y = GRU <hidden_size = 2, direction = "reverse", linear_before_reset = 1, layout = 1> (x, w, r, b)
            z = RNN <hidden_size = 2, activations = ["Relu"]> (x, v, q)
        }""", {"x": r(2, 3, 3), "w": r(1, 6, 3), "r": r(1, 6, 2), "b": r(1, 12), "v": r(1, 2, 3), "q": r(1, 2, 2)}),
        "einsum_matmul": ("""(double[2,3,4] a, double[2,4,2] b, double[3,5] c, double[2,5] d, double[2] e)
                             => (double m, double n, double g) {
            m = Einsum <equation = "bij,bjk->bik"> (a, b)
            n = MatMul (a, b)
            g = Gemm <transA = 1, transB = 1, alpha = 0.5, beta = 2.0> (c, d, e)
        }""", {"a": r(2, 3, 4), "b": r(2, 4, 2), "c": r(5, 3), "d": r(2, 5), "e": r(2)}),
        "attention": ("""(double[2,2,3,4] q, double[2,1,5,4] k, double[2,1,5,4] v, double[3,5] m,
                          double[2,3,8] x, double[3,2] cos, double[3,2] sin, double[2,3] a, double[2,3] b)
                          => (double y, double pk, double pv, double qk, double r, double g) {
            y, pk, pv, qk = Attention <is_causal = 1, softcap = 3.0, qk_matmul_output_mode = 3> (q, k, v, m)
            r = RotaryEmbedding <num_heads = 2> (x, cos, sin)
            g = SwiGLU <alpha = 1.5> (a, b)
        }""", {"q": r(2, 2, 3, 4), "k": r(2, 1, 5, 4), "v": r(2, 1, 5, 4), "m": r(3, 5), "x": r(2, 3, 8),
               "cos": r(3, 2), "sin": r(3, 2), "a": r(2, 3), "b": r(2, 3)}),
        "sampling": ("""(double[1,2,4,5] x, double[1,3,2,2] grid, double[1,2,3] theta) => (double a, double b) {
            a = GridSample <mode = "cubic", padding_mode = "border"> (x, grid)
            size = Constant <value = int64[4] {1, 2, 3, 3}> ()
            b = AffineGrid <align_corners = 1> (theta, size)
        }""", {"x": r(1, 2, 4, 5), "grid": rng.uniform(-1.2, 1.2, size=(1, 3, 2, 2)), "theta": r(1, 2, 3)}),
        "spectral": ("""(double[1,20,1] x, double[6] w, double[1,5,4,2] c) => (double s, double d) {
            step = Constant <value = int64 {3}> ()
            s = STFT <onesided = 1> (x, step, w)
            d = DFT <inverse = 1> (c)
        }""", {"x": r(1, 20, 1), "w": r(6), "c": r(1, 5, 4, 2)}),
        "control_flow": ("""(double[3] x, bool c, int64 t) => (double y, double s) {
            y = If <then_branch = g1 () => (double z) { z = Mul (x, x) },
                    else_branch = g2 () => (double z) { z = Neg (x) }> (c)
            s = Loop <body = g3 (int64 i, bool k, double[3] acc) => (bool k2, double[3] out) {
                k2 = Identity (k)
                sa = Sin (acc)
                out = Add (sa, x)
            }> (t, , x)
        }""", {"x": r(3), "c": np.array(True), "t": np.array(3)}),
    }


_OPSETS = {"normalisation": 21, "attention": 24, "sampling": 20, "spectral": 17}


def _module(text: str, opset: int = 18) -> OnnxModule:
    model = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : {opset}]>\nagraph {text}')
    return OnnxModule(model)


@pytest.mark.parametrize("family", sorted(_cases(np.random.default_rng(0))))
def test_gradients_match_finite_differences(family):
    text, inputs = _cases(np.random.default_rng(0))[family]
    module = _module(text, _OPSETS.get(family, 18))
    args = [torch.tensor(inputs[name], requires_grad=np.asarray(inputs[name]).dtype == np.float64)
            for name in module.input_names]
    assert any(a.requires_grad for a in args)

    def run(*xs):
        return tuple(out for out in module(*xs) if out.is_floating_point())

    assert torch.autograd.gradcheck(run, args, eps=1e-6, atol=1e-5, rtol=1e-3)
