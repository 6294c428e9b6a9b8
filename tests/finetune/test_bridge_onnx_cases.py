"""The torch bridge on onnx's own backend node tests: every case of every supported op, function bodies too.

The cases come from the onnx wheel's generators; one run serves every test
here (about 10 s). docs/bridge_ops.md is this run's table.
"""

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from onnxjpq.finetune.torchops.conformance import collect_cases, tolerances  # noqa: E402
from onnxjpq.finetune.torchops.coverage import (EXPLAINED, TARGET_OPS, figures, measure, render,  # noqa: E402
                                               supported_ops)

DOC = Path(__file__).resolve().parents[2] / "docs" / "bridge_ops.md"
_UNSUPPORTED_REASONS = ("torch has no such dtype", "the bridge runs tensors only")


@pytest.fixture(scope="module")
def outcomes():
    return measure()


def test_every_operator_of_the_issue_is_registered_and_has_cases():
    assert not [op for op in TARGET_OPS if op not in supported_ops()]
    assert not [op for op in TARGET_OPS if not collect_cases().get(op)]


@pytest.mark.parametrize("op", sorted(set(supported_ops()) & set(collect_cases())))
def test_each_case_passes_or_is_refused_for_its_types_or_is_an_explained_failure(outcomes, op):
    direct, _ = outcomes
    mine = [o for o in direct if o.op == op]
    assert len(mine) == len(collect_cases()[op])
    for o in mine:
        if o.status == "unsupported":
            assert any(r in o.reason for r in _UNSUPPORTED_REASONS), (o.case, o.reason)
        elif o.case in EXPLAINED:
            assert o.status == "failed", f"{o.case} passes now: drop it from EXPLAINED"
        else:
            assert o.status == "passed", (o.case, o.reason)


def test_at_least_95_percent_of_the_issues_cases_pass(outcomes):
    rows = [r for r in figures(*outcomes) if r.op in TARGET_OPS]
    runnable = sum(r.run - r.unsupported for r in rows)
    assert sum(r.passed for r in rows) >= 0.95 * sum(r.run for r in rows)
    assert sum(r.passed for r in rows) >= 0.99 * runnable
    assert sum(r.run for r in rows) > 800


@pytest.mark.parametrize("bits", ["INT4", "UINT4", "INT2", "UINT2"])
def test_narrow_integer_casts_and_quantizers_pass(outcomes, bits):
    """torch has no kernels for 2- and 4-bit integers: the bridge holds their values in bytes."""
    direct, _ = outcomes
    mine = [o for o in direct if bits.lower() in o.case.lower().split("_") or f"_{bits}" in o.case
            or o.case.endswith(f"_{bits.lower()}")]
    assert len(mine) >= 12
    assert not [(o.case, o.reason) for o in mine if o.status != "passed"]


def test_every_function_body_variant_the_bridge_can_run_passes(outcomes):
    _, expanded = outcomes
    ran = [o for o in expanded if o.status != "unsupported"]
    assert len(ran) > 200
    assert not [(o.case, o.reason) for o in ran if o.status != "passed"]


def test_the_random_dropout_cases_keep_or_zero_each_value_with_the_right_scale():
    from onnxjpq.finetune.bridge import OnnxModule
    from onnxjpq.finetune.torchops.dtypes import to_torch

    cases = {c.name: c for c in collect_cases()["Dropout"]}
    for name in EXPLAINED:
        inputs = cases[name].data_sets[0][0]
        outs = OnnxModule(cases[name].model)(*[to_torch(np.asarray(v)) for v in inputs])
        x, ratio = inputs[0], float(np.asarray(inputs[1]))
        y = outs[0].detach().numpy()
        kept = y != 0
        np.testing.assert_allclose(y[kept], x[kept] / (1 - ratio), rtol=1e-6)
        assert 0 < kept.mean() < 1
        if len(outs) > 1:
            assert (outs[1].numpy() == kept).all()


def test_float32_tolerances_are_floored_and_others_kept():
    assert tolerances(np.dtype(np.float32), 1e-3, 1e-7) == (1e-3, 1e-5)
    assert tolerances(np.dtype(np.int64), 0.0, 0.0) == (0.0, 0.0)


def test_the_docs_table_is_this_runs_table(outcomes):
    assert DOC.read_text() == render(*outcomes), "docs/bridge_ops.md is stale: python tools/bridge_coverage.py --write"


@pytest.mark.parametrize("p", [1, 2, 3])
def test_global_lp_pool_which_has_no_backend_case_matches_onnxruntime(p):
    from onnxjpq.finetune.bridge import OnnxModule
    from onnxjpq.testing import make_model, run

    model = make_model(f"""
    agraph (float[2, 3, 4, 5] x) => (float[2, 3, 1, 1] y) {{
        y = GlobalLpPool <p = {p}> (x)
    }}""", {})
    x = np.random.default_rng(p).normal(size=(2, 3, 4, 5)).astype(np.float32)
    want = run(model, {"x": x})[0]
    np.testing.assert_allclose(OnnxModule(model)(torch.from_numpy(x))[0].numpy(), want, rtol=1e-5)
