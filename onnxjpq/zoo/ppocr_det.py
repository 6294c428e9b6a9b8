"""PP-OCRv4 mobile text detector (rapidocr-onnxruntime): finds the text lines of rendered pages.

Model: `ch_PP-OCRv4_det_infer.onnx`, a DB (differentiable binarization)
segmenter: input `x` [batch, 3, h, w] (BGR, ImageNet-normalised, sides
multiples of 32), output [batch, 1, h, w], the probability that each pixel
lies in the shrunk core of a text region. Depthwise-separable PP-LCNetV3
backbone, an FPN-style neck with `Resize`, two `ConvTranspose` in the head.

Data: `ppocr_det_data(n, seed)` renders n pages of 480x480 with 6-11
left-to-right text lines (random words, sizes 18-33 px, dark ink on a light
tint, spaced at least 8 px) at random indents; each line's ink bounding box
is under `boxes` [n, 16, 4] (x0, y0, x1, y1; rows of -1 pad).

Metric: the boxes PaddleOCR's DB post-processing gives (pixels above 0.3,
connected regions whose mean probability is at least 0.5, each expanded by
area x 1.6 / perimeter; axis-aligned here, which is exact for level lines),
matched one-to-one at IoU > 0.5: F1 of the candidate's boxes against the
fp32 model's (`box_f1`); against the rendered lines' ink boxes
(`ppocr_det_truth`) at IoU > 0.3, since DB's expanded boxes are larger than
the ink by a margin that is most of a short word's box.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from onnxjpq.zoo import ppocr

NAME = "ppocr_det"
FILE = ppocr.DET_FILE
INPUT = "x"
SIZE = 480
MAX_LINES = 16
THRESH, BOX_THRESH, UNCLIP = 0.3, 0.5, 1.6
TRUTH_IOU = 0.3


def export_ppocr_det(folder) -> Path:
    """Copy the detector to `folder/ppocr_det.onnx`."""
    return ppocr.copy_model(ppocr.model_file(FILE), folder, f"{NAME}.onnx")


def _page(rng: np.random.Generator):
    from PIL import Image, ImageDraw

    ground = tuple(int(v) for v in rng.integers(200, 256, 3))
    image = Image.new("RGB", (SIZE, SIZE), ground)
    draw = ImageDraw.Draw(image)
    boxes = []
    y = int(rng.integers(8, 30))
    while len(boxes) < MAX_LINES:
        f = ppocr.font(int(rng.integers(18, 34)))
        text = ppocr.random_line(rng, (1, 3), 0.3)
        left, top, right, bottom = f.getbbox(text)
        if y + bottom > SIZE - 8:
            break
        if right - left > SIZE - 24:
            continue
        x = int(rng.integers(10, SIZE - 10 - (right - left)))
        mask = Image.new("L", (SIZE, SIZE), 0)
        ImageDraw.Draw(mask).text((x - left, y), text, fill=255, font=f)
        draw.text((x - left, y), text, fill=tuple(int(v) for v in rng.integers(0, 90, 3)), font=f)
        boxes.append(mask.getbbox())
        y += bottom + int(rng.integers(8, 30))
    return image, np.array(boxes, np.float32)


def ppocr_det_data(n: int, seed: int) -> dict[str, np.ndarray]:
    """n rendered pages as `x` [n, 3, 480, 480] and their line boxes as `boxes` [n, 16, 4]."""
    rng = np.random.default_rng(seed)
    images, boxes = [], np.full((n, MAX_LINES, 4), -1, np.float32)
    for i in range(n):
        image, lines = _page(rng)
        images.append(ppocr.imagenet_tensor(image))
        boxes[i, :len(lines)] = lines
    return {INPUT: np.stack(images), "boxes": boxes}


def ppocr_det_outputs(model, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The text probability maps [n, 1, h, w]."""
    return {"probability": ppocr.run(model, {INPUT: data[INPUT]}, batch=4)[0]}


def text_boxes(probability: np.ndarray) -> np.ndarray:
    """DB post-processing of one [h, w] map: the text boxes [k, 4] (x0, y0, x1, y1)."""
    from scipy import ndimage

    labels, _ = ndimage.label(probability > THRESH)
    boxes = []
    for index, region in enumerate(ndimage.find_objects(labels), 1):
        if region is None:
            continue
        rows, cols = region
        height, width = rows.stop - rows.start, cols.stop - cols.start
        if min(height, width) < 3 or probability[region][labels[region] == index].mean() < BOX_THRESH:
            continue
        grow = height * width * UNCLIP / (2 * (height + width))
        boxes.append((cols.start - grow, rows.start - grow, cols.stop + grow, rows.stop + grow))
    return np.array(boxes, np.float32).reshape(-1, 4)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a [k, 4] and b [m, 4]."""
    x0, y0 = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    x1, y1 = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-9)


def matches(found: np.ndarray, wanted: np.ndarray, threshold: float = 0.5) -> tuple[int, list[float]]:
    """Greedy one-to-one matching at IoU > threshold, best pairs first: (count, their IoUs)."""
    if not len(found) or not len(wanted):
        return 0, []
    overlaps = iou(found, wanted)
    used_f, used_w, ious = set(), set(), []
    for flat in np.argsort(-overlaps, axis=None):
        i, j = divmod(int(flat), overlaps.shape[1])
        if overlaps[i, j] <= threshold:
            break
        if i not in used_f and j not in used_w:
            used_f.add(i), used_w.add(j), ious.append(float(overlaps[i, j]))
    return len(ious), ious


def _f1(found: list[np.ndarray], wanted: list[np.ndarray], threshold: float = 0.5) -> dict[str, float]:
    hits, ious, n_found, n_wanted = 0, [], 0, 0
    for f, w in zip(found, wanted):
        count, pair_ious = matches(f, w, threshold)
        hits, n_found, n_wanted = hits + count, n_found + len(f), n_wanted + len(w)
        ious += pair_ious
    return {"f1": 2 * hits / max(1, n_found + n_wanted), "precision": hits / max(1, n_found),
            "recall": hits / max(1, n_wanted), "mean_iou": float(np.mean(ious)) if ious else 0.0}


def _boxes(outputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [text_boxes(p[0]) for p in outputs["probability"]]


def _truth_boxes(data: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [b[b[:, 0] >= 0] for b in data["boxes"]]


def ppocr_det_truth(outputs: dict[str, np.ndarray], data: dict[str, np.ndarray]) -> dict[str, float]:
    """Line-detection F1, precision, recall and mean IoU against the rendered lines' ink boxes,
    matched at IoU > 0.3 (DB's unclipped boxes are by design some pixels larger than the ink)."""
    return _f1(_boxes(outputs), _truth_boxes(data), TRUTH_IOU)


def ppocr_det_metric(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                     data: dict[str, np.ndarray]) -> dict[str, float]:
    """F1 of the candidate's boxes against the reference's (`box_f1`, `box_iou`), its F1 against
    the rendered lines (`truth_f1`), and the largest change of the probability map."""
    cand = _boxes(candidate)
    agree = _f1(cand, _boxes(reference))
    return {"box_f1": agree["f1"], "box_iou": agree["mean_iou"],
            "truth_f1": _f1(cand, _truth_boxes(data), TRUTH_IOU)["f1"],
            "max_abs_diff": float(np.abs(reference["probability"] - candidate["probability"]).max())}
