"""LSTM, GRU and RNN: forward, reverse and bidirectional, initial states, sequence_lens, clip, activations
with their alphas and betas, LSTM peepholes and input_forget, GRU's linear_before_reset, both layouts.

Gates are in ONNX's order (LSTM i o f c, GRU z r h). The input projections of
all steps are one matmul; the recurrence is a Python loop over time. With
sequence_lens, a batch entry's state stops at its last step and its outputs
after that are zero; a reverse direction runs each sequence reversed within
its own length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import register

_DEFAULTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
# activation -> (uses alpha, uses beta, default alpha, default beta)
_PARAMS = {"Affine": (True, True, 1.0, 0.0), "LeakyRelu": (True, False, 0.01, 0.0),
           "ThresholdedRelu": (True, False, 1.0, 0.0), "ScaledTanh": (True, True, 1.0, 1.0),
           "HardSigmoid": (True, True, 0.2, 0.5), "Elu": (True, False, 1.0, 0.0)}


def _activation(name: str, alpha: float, beta: float):
    return {
        "Relu": torch.relu, "Tanh": torch.tanh, "Sigmoid": torch.sigmoid, "Softsign": F.softsign,
        "Softplus": F.softplus, "Affine": lambda x: alpha * x + beta,
        "LeakyRelu": lambda x: F.leaky_relu(x, alpha), "Elu": lambda x: F.elu(x, alpha),
        "ThresholdedRelu": lambda x: torch.where(x > alpha, x, torch.zeros_like(x)),
        "ScaledTanh": lambda x: alpha * torch.tanh(beta * x),
        "HardSigmoid": lambda x: torch.clamp(alpha * x + beta, 0, 1),
    }[name]


_KNOWN = {"Relu", "Tanh", "Sigmoid", "Softsign", "Softplus", *_PARAMS}


def _activations(node, dirs: int) -> list[list]:
    """Per direction, the activation functions (alphas and betas consumed in order by those that take them)."""
    names = node.attr("activations") or _DEFAULTS[node.op_type] * dirs
    alphas, betas = list(node.attr("activation_alpha") or []), list(node.attr("activation_beta") or [])
    fns = []
    for name in names:
        uses_a, uses_b, a, b = _PARAMS.get(name, (False, False, 0.0, 0.0))
        a = alphas.pop(0) if uses_a and alphas else a
        b = betas.pop(0) if uses_b and betas else b
        fns.append(_activation(name, a, b))
    per = len(_DEFAULTS[node.op_type])
    return [fns[d * per:(d + 1) * per] for d in range(dirs)]


def _check(node) -> str | None:
    unknown = sorted(set(node.attr("activations") or []) - _KNOWN)
    return f"{node.op_type} with activations {', '.join(unknown)}" if unknown else None


def _reverse_within(x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """x [time, batch, ...] with each batch entry's first lens[b] steps reversed."""
    steps = torch.arange(x.shape[0]).unsqueeze(1)
    source = torch.where(steps < lens, lens - 1 - steps, steps)
    return torch.gather(x, 0, source.reshape(*source.shape, *[1] * (x.dim() - 2)).expand(x.shape))


def _lstm_step(node, acts, r, rb, p, hidden):
    f, g, h_act = acts
    clip, couple = node.attr("clip"), node.attr("input_forget", 0)
    pi, po, pf = (p.split(hidden) if p is not None else (None, None, None))

    def step(gx, h, c):
        z = gx + h @ r.t() + rb
        z = z.clamp(-clip, clip) if clip is not None else z
        zi, zo, zf, zc = z.split(hidden, dim=-1)
        i = f(zi + pi * c if pi is not None else zi)
        fg = f(zf + pf * c if pf is not None else zf)
        i = 1 - fg if couple else i
        c = fg * c + i * g(zc)
        o = f(zo + po * c if po is not None else zo)
        return o * h_act(c), c
    return step


def _gru_step(node, acts, r, rb, p, hidden):
    f, g = acts
    clip, linear_before = node.attr("clip"), node.attr("linear_before_reset", 0)
    rz, rr, rh = r.split(hidden)
    bz, br, bh = rb.split(hidden)

    def step(gx, h, c):
        xz, xr, xh = gx.split(hidden, dim=-1)
        cut = (lambda v: v.clamp(-clip, clip)) if clip is not None else (lambda v: v)
        z = f(cut(xz + h @ rz.t() + bz))
        rg = f(cut(xr + h @ rr.t() + br))
        pre = xh + rg * (h @ rh.t() + bh) if linear_before else xh + (rg * h) @ rh.t() + bh
        return (1 - z) * g(cut(pre)) + z * h, c
    return step


def _rnn_step(node, acts, r, rb, p, hidden):
    clip = node.attr("clip")

    def step(gx, h, c):
        z = gx + h @ r.t() + rb
        return acts[0](z.clamp(-clip, clip) if clip is not None else z), c
    return step


_STEPS = {"LSTM": (_lstm_step, 4), "GRU": (_gru_step, 3), "RNN": (_rnn_step, 1)}


def _direction(step, gx, h, c, lens, reverse: bool):
    """Run `step` over gx [time, batch, gates]; returns Y [time, batch, hidden] and the final h, c."""
    gx = _reverse_within(gx, lens) if reverse else gx
    ys = []
    for t in range(gx.shape[0]):
        h_new, c_new = step(gx[t], h, c)
        live = (t < lens).unsqueeze(1)
        h = torch.where(live, h_new, h)
        c = torch.where(live, c_new, c) if c is not None else None
        ys.append(torch.where(live, h_new, torch.zeros_like(h_new)))
    y = torch.stack(ys) if ys else gx.new_zeros(0, *h.shape)
    return (_reverse_within(y, lens) if reverse else y), h, c


def _recurrent(node, x, w, r, b=None, lens=None, h0=None, c0=None, p=None):
    batch_first = node.attr("layout", 0) == 1
    x = x.transpose(0, 1) if batch_first else x
    h0 = h0.transpose(0, 1) if batch_first and h0 is not None else h0
    c0 = c0.transpose(0, 1) if batch_first and c0 is not None else c0
    steps, batch = x.shape[:2]
    hidden, dirs = node.attr("hidden_size") or r.shape[-1], w.shape[0]
    make_step, gates = _STEPS[node.op_type]
    lens = lens.long() if lens is not None else torch.full((batch,), steps, dtype=torch.int64)
    direction = node.attr("direction", "forward")
    acts = _activations(node, dirs)
    ys, hs, cs = [], [], []
    for d in range(dirs):
        wb, rb = (b[d].split(gates * hidden) if b is not None else (0, torch.zeros(gates * hidden, dtype=x.dtype)))
        h = h0[d] if h0 is not None else x.new_zeros(batch, hidden)
        c = (c0[d] if c0 is not None else x.new_zeros(batch, hidden)) if node.op_type == "LSTM" else None
        step = make_step(node, acts[d], r[d], rb, p[d] if p is not None else None, hidden)
        y, h, c = _direction(step, x @ w[d].t() + wb, h, c, lens, direction == "reverse" or d == 1)
        ys.append(y)
        hs.append(h)
        cs.append(c)
    y, y_h = torch.stack(ys, 1), torch.stack(hs)
    outs = [y.permute(2, 0, 1, 3) if batch_first else y, y_h.transpose(0, 1) if batch_first else y_h]
    if node.op_type == "LSTM":
        y_c = torch.stack(cs)
        outs.append(y_c.transpose(0, 1) if batch_first else y_c)
    return outs[:max(1, node.n_outputs)]


register("LSTM", check=_check)(_recurrent)
register("GRU", check=_check)(_recurrent)
register("RNN", check=_check)(_recurrent)
