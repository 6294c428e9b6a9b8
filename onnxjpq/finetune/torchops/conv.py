"""Conv and ConvTranspose in 1, 2 or 3 spatial dimensions, with every attribute: auto_pad, pads
(asymmetric ones are applied with F.pad), strides, dilations, group, and for ConvTranspose
output_padding and output_shape.

ConvTranspose's general path runs torch's kernel unpadded and then crops (or
zero-extends) each axis to the ONNX output window: begin pad `b`, length
`stride*(in-1) + output_padding + dilation*(kernel-1) + 1 - b - e` or the given
output_shape, with auto_pad splitting the total pad as onnx's reference does.
"""

from __future__ import annotations

import torch.nn.functional as F

from .common import auto_pads, check_auto_pad, pad_begin_end
from .registry import register

_CONV = (F.conv1d, F.conv2d, F.conv3d)
_CONV_T = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)


def _check_rank(node) -> str | None:
    kernel = node.ints("kernel_shape")
    if kernel is not None and not 1 <= len(kernel) <= 3:
        return f"{node.op_type} with {len(kernel)} spatial axes (torch has 1-D to 3-D convolutions)"
    return check_auto_pad(node)


@register("Conv", check=_check_rank)
def conv(node, x, w, b=None):
    rank = x.dim() - 2
    kernel = list(w.shape[2:])
    strides, dil = node.ints("strides", [1] * rank), node.ints("dilations", [1] * rank)
    begins, ends = auto_pads(node, list(x.shape[2:]), kernel, strides, dil)
    if begins != ends:
        x, begins = pad_begin_end(x, begins, ends), [0] * rank
    return [_CONV[rank - 1](x, w, b, strides, begins, dil, node.attr("group", 1))]


def _transpose_window(node, x, w, strides, dil, out_pad) -> tuple[list[int], list[int]]:
    """Begin pads and output lengths of a ConvTranspose (onnx's reference rules)."""
    rank = x.dim() - 2
    full = [s * (n - 1) + p + (k - 1) * d + 1
            for s, n, p, k, d in zip(strides, x.shape[2:], out_pad, w.shape[2:], dil)]
    shape = node.ints("output_shape")
    shape = shape[-rank:] if shape else None
    mode = node.attr("auto_pad", "NOTSET")
    if node.attr("pads") is None and mode in ("SAME_UPPER", "SAME_LOWER"):
        out = shape or [n * s for n, s in zip(x.shape[2:], strides)]
        totals = [f - o for f, o in zip(full, out)]
        begins = [t // 2 if mode == "SAME_UPPER" else t - t // 2 for t in totals]
        return begins, out
    pads = node.ints("pads", [0] * (2 * rank)) if mode != "VALID" else [0] * (2 * rank)
    return pads[:rank], shape or [f - b - e for f, b, e in zip(full, pads[:rank], pads[rank:])]


@register("ConvTranspose", check=_check_rank)
def conv_transpose(node, x, w, b=None):
    rank = x.dim() - 2
    strides, dil = node.ints("strides", [1] * rank), node.ints("dilations", [1] * rank)
    out_pad = node.ints("output_padding", [0] * rank)[-rank:]
    group = node.attr("group", 1)
    begins, out = _transpose_window(node, x, w, strides, dil, out_pad)
    full = [s * (n - 1) + (k - 1) * d + 1 for s, n, k, d in zip(strides, x.shape[2:], w.shape[2:], dil)]
    ends = [f + op - bg - o for f, op, bg, o in zip(full, out_pad, begins, out)]
    fits = all(0 <= op < max(s, d) for op, s, d in zip(out_pad, strides, dil))
    if begins == ends and fits and min(begins) >= 0:
        return [_CONV_T[rank - 1](x, w, b, strides, begins, out_pad, group, dil)]
    y = _CONV_T[rank - 1](x, w, None, strides, 0, 0, group, dil)
    y = pad_begin_end(y, [-bg for bg in begins], [o + bg - f for o, bg, f in zip(out, begins, full)])
    return [y if b is None else y + b.reshape(1, -1, *[1] * rank)]
