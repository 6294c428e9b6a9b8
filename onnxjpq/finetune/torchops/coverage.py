"""Per-op figures of the conformance run (`conformance.run_cases`) and the text of docs/bridge_ops.md.

`TARGET_OPS` are the operators issue 14 asks the bridge to cover and onnx has
backend tests for (GlobalLpPool has none); the other registered ops are
reported apart. `EXPLAINED` gives, for each case known to
fail, why; the tests hold the bridge to exactly these failures.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import torch

from .conformance import Outcome, collect_cases, run_cases
from .registry import OPS

TARGET_OPS = (
    "Add Sub Mul Div Pow Sqrt Exp Log Abs Neg Reciprocal Floor Ceil Round Sign Erf Sin Cos Tanh Sigmoid Mod "
    "Equal Less Greater LessOrEqual GreaterOrEqual And Or Xor Not Where IsNaN IsInf "
    "Relu HardSigmoid HardSwish Gelu Softplus Softsign Mish LeakyRelu PRelu Selu Elu Celu ThresholdedRelu Clip "
    "Max Min Mean Sum Cast CastLike Shape Size Range ConstantOfShape Expand Tile Identity Constant "
    "Reshape Flatten Squeeze Unsqueeze Transpose Slice Split Concat Gather GatherElements GatherND ScatterND "
    "ScatterElements Pad Resize Upsample MaxPool AveragePool LpPool GlobalAveragePool GlobalMaxPool "
    "ReduceSum ReduceMean ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp "
    "ReduceSumSquare ArgMax ArgMin TopK CumSum Einsum MatMul Gemm BatchNormalization InstanceNormalization "
    "LayerNormalization GroupNormalization Softmax LogSoftmax Conv ConvTranspose LSTM GRU RNN DepthToSpace "
    "SpaceToDepth Dropout If Loop Scan"
).split()

_RANDOM_MASK = ("training_mode=1 draws a random mask; the expected output was drawn with numpy's generator, "
                "which torch cannot reproduce (shape, dtype and the 1/(1-ratio) scaling of kept values are right)")
EXPLAINED = {name: _RANDOM_MASK for name in (
    "test_training_dropout", "test_training_dropout_mask", "test_training_dropout_default",
    "test_training_dropout_default_mask")}


def supported_ops() -> list[str]:
    """Op types the bridge runs (Constant nodes become values when the graph is compiled)."""
    return sorted({*OPS, "Constant"})


@dataclass(frozen=True)
class OpFigures:
    op: str
    run: int
    passed: int
    unsupported: int
    failed: int
    expanded_run: int
    expanded_passed: int


def figures(direct: list[Outcome], expanded: list[Outcome]) -> list[OpFigures]:
    ops = sorted({o.op for o in direct} | {o.op for o in expanded})
    rows = []
    for op in ops:
        mine = [o for o in direct if o.op == op]
        body = [o for o in expanded if o.op == op and o.status != "unsupported"]
        rows.append(OpFigures(op, len(mine), sum(o.status == "passed" for o in mine),
                              sum(o.status == "unsupported" for o in mine), sum(o.status == "failed" for o in mine),
                              len(body), sum(o.status == "passed" for o in body)))
    return rows


def measure() -> tuple[list[Outcome], list[Outcome]]:
    """Every case (and every runnable function-body variant) of every supported op."""
    ops = supported_ops()
    return run_cases(ops), run_cases(ops, expanded=True)


def _table(rows: list[OpFigures]) -> list[str]:
    lines = ["| op | cases | passed | unsupported | failed | function-body variants passed / run |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        body = f"{r.expanded_passed} / {r.expanded_run}" if r.expanded_run else "-"
        lines.append(f"| {r.op} | {r.run} | {r.passed} | {r.unsupported} | {r.failed} | {body} |")
    return lines


def _totals(rows: list[OpFigures]) -> str:
    run, passed = sum(r.run for r in rows), sum(r.passed for r in rows)
    runnable = run - sum(r.unsupported for r in rows)
    return (f"{passed} of {run} cases pass ({100 * passed / max(run, 1):.1f} %); of the {runnable} cases "
            f"in types torch has, {passed} pass ({100 * passed / max(runnable, 1):.1f} %)")


def _failures(direct: list[Outcome], expanded: list[Outcome]) -> list[str]:
    failed = [o for o in [*direct, *expanded] if o.status == "failed"]
    if not failed:
        return ["None."]
    return [f"- `{o.case}` ({o.op}): {o.reason}." + (f" {EXPLAINED[o.case]}." if o.case in EXPLAINED else "")
            for o in failed]


def _unsupported(direct: list[Outcome]) -> list[str]:
    by_reason: dict[str, list[str]] = {}
    for o in direct:
        if o.status == "unsupported":
            by_reason.setdefault(o.reason.removeprefix("fine-tuning cannot run "), []).append(o.case)
    return [f"- {reason} ({len(cases)}): {', '.join(f'`{c}`' for c in cases)}"
            for reason, cases in sorted(by_reason.items())] or ["None."]


def render(direct: list[Outcome], expanded: list[Outcome]) -> str:
    """docs/bridge_ops.md for these outcomes."""
    rows = figures(direct, expanded)
    target = [r for r in rows if r.op in TARGET_OPS]
    further = [r for r in rows if r.op not in TARGET_OPS]
    body_run, body_passed = sum(r.expanded_run for r in rows), sum(r.expanded_passed for r in rows)
    missing = sorted(op for op in collect_cases() if op not in supported_ops())
    lines = [
        "# Operators of the torch bridge, checked against onnx's backend node tests",
        "",
        "Written by `python tools/bridge_coverage.py --write` (do not edit by hand); "
        f"onnx {onnx.__version__}, torch {torch.__version__.split('+')[0]}. "
        "`tests/finetune/test_bridge_onnx_cases.py` runs the same cases and fails when this page is stale.",
        "",
        "Each case is one ONNX node with its inputs and expected outputs, generated by the onnx wheel "
        "(`onnx.backend.test.case.node.collect_testcases`). The bridge (`onnxjpq.finetune.bridge.OnnxModule`) runs "
        "the case's model; a case passes when every output has the expected shape and dtype and its values are "
        "within the case's tolerances (rtol at least 1e-4 and atol at least 1e-5 for float32, 1e-3 for float16). "
        "*Unsupported* cases are refused up front with a one-line ModelError (tensor types torch has no dtype "
        "for, sequence and optional values); *failed* cases ran and gave other values. The last column runs "
        "the `_expanded` variants (the op's function body as a graph of other ops) that the bridge can run.",
        "",
        "## Summary",
        "",
        f"- The {len(target)} operators issue 14 lists: {_totals(target)}.",
        f"- The {len(further)} further operators the bridge runs: {_totals(further)}.",
        f"- Function-body variants: {body_passed} of {body_run} pass.",
        "",
        "## Operators issue 14 lists", "", *_table(target), "",
        "## Further operators", "", *_table(further), "",
        "## Failures", "", *_failures(direct, expanded), "",
        "## Unsupported cases, by reason", "", *_unsupported(direct), "",
        "## Ops with backend tests that the bridge does not run", "",
        "A model using one of these is refused before training with a ModelError that names them: "
        + ", ".join(f"{op} ({len(collect_cases()[op])})" for op in missing) + ".",
        "",
    ]
    return "\n".join(lines)
