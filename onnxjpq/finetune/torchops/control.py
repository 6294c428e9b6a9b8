"""Control flow: If, Loop and Scan (opset 8's batched form too). Their bodies are compiled `Graph`s run
with the enclosing graph's values in scope, so a body reads outer tensors (and trainable weights) directly.
"""

from __future__ import annotations

import torch

from .common import axis
from .registry import register


@register("If", scoped=True)
def if_(node, cond, scope):
    branch = node.attr("then_branch") if bool(cond.reshape(-1)[0]) else node.attr("else_branch")
    return branch(scope)


def _stack(slices: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(slices) if slices else torch.zeros(0)


@register("Loop", scoped=True)
def loop(node, trip=None, cond=None, *initial, scope):
    body = node.attr("body")
    limit = int(trip.item()) if trip is not None else None
    keep = bool(cond.item()) if cond is not None else True
    carried = list(initial)
    scans: list[list[torch.Tensor]] = []
    i = 0
    while keep and (limit is None or i < limit):
        outs = body(scope, torch.tensor(i, dtype=torch.int64), torch.tensor(keep), *carried)
        keep = bool(outs[0].item())
        carried = list(outs[1:1 + len(initial)])
        extra = outs[1 + len(initial):]
        scans = scans or [[] for _ in extra]
        for bucket, value in zip(scans, extra):
            bucket.append(value)
        i += 1
    n_scans = len(body.output_names) - 1 - len(initial)
    return carried + [_stack(s) for s in (scans or [[] for _ in range(n_scans)])]


def _scan(node, states: list[torch.Tensor], inputs: list[torch.Tensor], scope) -> list[torch.Tensor]:
    """Scan (opset 9 and later) over `inputs`, carrying `states`."""
    body = node.attr("body")
    n_in = len(inputs)
    in_axes = node.ints("scan_input_axes", [0] * n_in)
    in_dirs = node.ints("scan_input_directions", [0] * n_in)
    inputs = [x.movedim(axis(a, x.dim()), 0) for x, a in zip(inputs, in_axes)]
    inputs = [x.flip(0) if d else x for x, d in zip(inputs, in_dirs)]
    steps = inputs[0].shape[0] if inputs else 0
    scans: list[list[torch.Tensor]] = [[] for _ in range(len(body.output_names) - len(states))]
    for t in range(steps):
        outs = body(scope, *states, *[x[t] for x in inputs])
        states = list(outs[:len(states)])
        for bucket, value in zip(scans, outs[len(states):]):
            bucket.append(value)
    out_axes = node.ints("scan_output_axes", [0] * len(scans))
    out_dirs = node.ints("scan_output_directions", [0] * len(scans))
    stacked = []
    for bucket, a, d in zip(scans, out_axes, out_dirs):
        y = _stack(bucket[::-1] if d else bucket)
        stacked.append(y.movedim(0, axis(a, y.dim())))
    return states + stacked


@register("Scan", scoped=True)
def scan(node, *args, scope):
    n_in = node.attr("num_scan_inputs")
    if node.opset >= 9:
        return _scan(node, list(args[:-n_in]), list(args[-n_in:]), scope)
    lens, rest = args[0], args[1:]  # opset 8: batch axis first, time second, optional sequence_lens
    states, inputs = list(rest[:-n_in]), list(rest[-n_in:])
    per_batch = []
    for b in range(inputs[0].shape[0]):
        length = int(lens[b]) if lens is not None else inputs[0].shape[1]
        per_batch.append(_scan(node, [s[b] for s in states], [x[b, :length] for x in inputs], scope))
    return [torch.stack(parts) for parts in zip(*per_batch)]
