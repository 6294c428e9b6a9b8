"""NonMaxSuppression: per batch and class, greedy selection by descending score (ties to the lower index),
suppressing boxes whose IoU with a kept one exceeds the threshold. Boxes are corners (y1, x1, y2, x2, in
either order) or, with center_point_box, (x centre, y centre, width, height).
"""

from __future__ import annotations

import torch

from .registry import register


def _corners(boxes: torch.Tensor, centred: bool) -> torch.Tensor:
    """[N, 4] boxes as (y_min, x_min, y_max, x_max)."""
    if centred:
        x, y, w, h = boxes.unbind(-1)
        return torch.stack([y - h / 2, x - w / 2, y + h / 2, x + w / 2], -1)
    y1, x1, y2, x2 = boxes.unbind(-1)
    return torch.stack([torch.minimum(y1, y2), torch.minimum(x1, x2), torch.maximum(y1, y2),
                        torch.maximum(x1, x2)], -1)


def _iou(c: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of corner boxes; 0 where boxes do not overlap or have no area."""
    lo = torch.maximum(c[:, None, :2], c[None, :, :2])
    hi = torch.minimum(c[:, None, 2:], c[None, :, 2:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    area = (c[:, 2:] - c[:, :2]).prod(-1)
    union = area[:, None] + area[None, :] - inter
    valid = (inter > 0) & (area[:, None] > 0) & (area[None, :] > 0) & (union > 0)
    return torch.where(valid, inter / torch.where(union > 0, union, torch.ones_like(union)), torch.zeros_like(inter))


def _select(iou: torch.Tensor, scores: torch.Tensor, limit: int, iou_max: float, score_min) -> list[int]:
    candidates = torch.arange(len(scores))
    if score_min is not None:
        candidates = candidates[scores > score_min]
    order = candidates[torch.sort(scores[candidates], descending=True, stable=True).indices].tolist()
    kept: list[int] = []
    for i in order:
        if len(kept) >= limit:
            break
        if all(iou[i, j] <= iou_max for j in kept):
            kept.append(i)
    return kept


@register("NonMaxSuppression")
def non_max_suppression(node, boxes, scores, max_out=None, iou_threshold=None, score_threshold=None):
    limit = max(int(max_out.reshape(-1)[0]), 0) if max_out is not None and max_out.numel() else 0
    iou_max = float(iou_threshold.reshape(-1)[0]) if iou_threshold is not None and iou_threshold.numel() else 0.0
    score_min = (float(score_threshold.reshape(-1)[0])
                 if score_threshold is not None and score_threshold.numel() else None)
    rows = []
    for b in range(boxes.shape[0]):
        iou = _iou(_corners(boxes[b].detach(), bool(node.attr("center_point_box", 0))))
        for c in range(scores.shape[1]):
            rows += [[b, c, i] for i in _select(iou, scores[b, c].detach(), limit, iou_max, score_min)]
    return [torch.tensor(rows, dtype=torch.int64).reshape(-1, 3)]
