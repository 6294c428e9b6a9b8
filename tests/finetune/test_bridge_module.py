"""OnnxModule's parameters: which tensors train, and that names map back to the graph."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from onnxjpq.finetune.bridge import OnnxModule  # noqa: E402
from onnxjpq.testing import make_model  # noqa: E402


def test_weights_train_and_scalars_stay_constants():
    model = make_model("""
    agraph (float[2, 3] x) => (float[2, 4] y) {
        h = MatMul (x, W)
        p = Pow (h, two)
        c = Constant <value = float[4] {1, 2, 3, 4}> ()
        y = Add (p, c)
    }""", {"W": np.ones((3, 4)), "two": np.array(2.0)})
    module = OnnxModule(model)
    assert sorted(module.named_weights()) == ["W", "c"]
    module(torch.ones(2, 3))[0].sum().backward()
    assert module.parameter("W").grad.abs().sum() > 0
    assert "two" in module.constants and module.constants["two"].dim() == 0


def test_only_the_trainable_names_become_parameters():
    model = make_model("""
    agraph (float[2, 3] x) => (float[2, 4] y) {
        h = MatMul (x, W)
        y = Add (h, b)
    }""", {"W": np.ones((3, 4)), "b": np.zeros(4)})
    module = OnnxModule(model, trainable={"W"})
    assert list(module.named_weights()) == ["W"] and "b" in module.constants
    np.testing.assert_allclose(module(torch.ones(2, 3))[0].detach().numpy(), np.full((2, 4), 3.0))
