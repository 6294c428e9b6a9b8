"""Attention (opsets 23 to 25) and RotaryEmbedding.

Attention: 3-D or 4-D inputs, grouped-query heads, past key/value caches,
boolean or additive masks, causal and sliding-window masks, nonpad_kv_seqlen,
softcap, softmax_precision and the four qk_matmul_output modes, as onnx's
reference (`onnx.reference.ops.op_attention`) computes them.

Fully masked rows give zero weights rather than NaN. The scale is applied as
sqrt(scale) to both Q and K, as in the reference.
"""

from __future__ import annotations

import math

import torch

from .dtypes import TORCH_DTYPES
from .registry import register


def _softmax(x: torch.Tensor) -> torch.Tensor:
    top = x.amax(-1, keepdim=True)
    top = torch.where(torch.isneginf(top), torch.zeros_like(top), top)
    e = torch.exp(x - top)
    total = e.sum(-1, keepdim=True)
    return e / torch.where(total == 0, torch.ones_like(total), total)


def _allowed_bias(allowed: torch.Tensor, dtype) -> torch.Tensor:
    return torch.where(allowed, torch.zeros((), dtype=dtype), torch.full((), -math.inf, dtype=dtype))


def _offset_diff(q: int, kv: int, offset) -> torch.Tensor:
    """(query position + offset) - key position, [q, kv] or, for a per-batch offset, [batch, 1, q, kv]."""
    diff = torch.arange(q).reshape(q, 1) - torch.arange(kv).reshape(1, kv)
    if isinstance(offset, torch.Tensor):
        return (diff + offset.reshape(-1, 1, 1)).unsqueeze(1)
    return diff + offset


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[batch, seq, hidden] -> [batch, heads, seq, hidden / heads]."""
    return x.reshape(x.shape[0], x.shape[1], heads, x.shape[2] // heads).transpose(1, 2)


def _mask_bias(node, q_len, kv_len, mask, dtype, offset):
    causal = node.attr("is_causal", 0)
    if mask is not None and mask.shape[-1] < kv_len:
        fill = False if mask.dtype == torch.bool else -math.inf
        mask = torch.nn.functional.pad(mask, [0, kv_len - mask.shape[-1]], value=fill)
    if mask is not None and mask.dtype == torch.bool:
        mask = _allowed_bias(mask, dtype)
    bias = torch.zeros(q_len, kv_len, dtype=dtype) + (mask if mask is not None else 0)
    if causal:
        bias = bias + _allowed_bias(_offset_diff(q_len, kv_len, offset) >= 0, dtype)
    left, right = node.attr("left_window_size", -1), node.attr("right_window_size", -1)
    if left >= 0 or right >= 0:
        diff = _offset_diff(q_len, kv_len, offset)
        allowed = torch.ones_like(diff, dtype=torch.bool)
        allowed = allowed & (diff <= left) if left >= 0 else allowed
        allowed = allowed & (-diff <= right) if right >= 0 else allowed
        bias = bias + _allowed_bias(allowed, dtype)
    return bias


@register("Attention")
def attention(node, q, k, v, mask=None, past_key=None, past_value=None, nonpad=None):
    three_d = q.dim() == 3
    if three_d:
        q, k, v = _heads(q, node.attr("q_num_heads")), _heads(k, node.attr("kv_num_heads")), \
            _heads(v, node.attr("kv_num_heads"))
    scale = node.attr("scale")
    scale = math.sqrt(scale if scale is not None else 1 / math.sqrt(q.shape[3]))
    k = torch.cat([past_key, k], 2) if past_key is not None else k
    v = torch.cat([past_value, v], 2) if past_value is not None else v
    q_len, kv_len = q.shape[2], k.shape[2]
    offset = (nonpad.reshape(-1).long() - q_len if past_key is None and nonpad is not None
              else (past_key.shape[2] if past_key is not None else 0))
    bias = _mask_bias(node, q_len, kv_len, mask, q.dtype, offset)
    if nonpad is not None:
        keep = torch.arange(kv_len).reshape(1, -1) < nonpad.reshape(-1, 1).long()
        bias = bias + _allowed_bias(keep, q.dtype).reshape(q.shape[0], 1, 1, kv_len)
    present_key, present_value = k, v
    if q.shape[1] != k.shape[1] and q.shape[1] % k.shape[1] == 0:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    qk = (q * scale) @ (k.transpose(2, 3) * scale)
    cap = node.attr("softcap", 0.0)
    qk = torch.tanh(qk / cap) * cap if cap and cap > 0 else qk
    scores = qk + bias
    mode = node.attr("qk_matmul_output_mode", 0)
    qk_out = scores if mode == 2 else qk
    precision = node.attr("softmax_precision")
    weights = _softmax(scores.to(TORCH_DTYPES[precision]) if precision is not None else scores)
    masked_rows = torch.isneginf(bias.amax(-1, keepdim=True))
    weights = torch.where(masked_rows, torch.zeros((), dtype=weights.dtype), weights)
    qk_out = weights if mode == 3 else qk_out
    y = weights.to(q.dtype) @ v
    if three_d:
        y = y.transpose(1, 2).reshape(y.shape[0], y.shape[2], -1)
    return [y, present_key, present_value, qk_out.to(q.dtype)][:max(1, node.n_outputs)]


@register("RotaryEmbedding")
def rotary_embedding(node, x, cos, sin, positions=None):
    """Rotate the first rotary_embedding_dim features of each head (halves, or interleaved pairs)."""
    shape = x.shape
    x = x.transpose(1, 2) if x.dim() == 4 else x.reshape(shape[0], shape[1], node.attr("num_heads"), -1)
    dim = node.attr("rotary_embedding_dim", 0) or x.shape[3]
    rotate, keep = x[..., :dim], x[..., dim:]
    if positions is not None:
        cos, sin = cos[positions.long()], sin[positions.long()]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    interleaved = node.attr("interleaved", 0)
    x1, x2 = (rotate[..., 0::2], rotate[..., 1::2]) if interleaved else rotate.chunk(2, dim=-1)
    real, imag = cos * x1 - sin * x2, sin * x1 + cos * x2
    rotated = torch.stack([real, imag], -1).reshape(rotate.shape) if interleaved else torch.cat([real, imag], -1)
    y = torch.cat([rotated, keep], -1)
    return [y.reshape(shape) if len(shape) == 3 else y.transpose(1, 2)]
