"""PaddleOCR's mobile text-direction classifier (rapidocr-onnxruntime): upright or upside down.

Model: `ch_ppocr_mobile_v2.0_cls_infer.onnx`, a MobileNetV3-small-style
network (depthwise 3x3/5x5 convolutions, squeeze-excitation, hard-swish):
input `x` [batch, 3, 48, 192] (a line scaled to [-1, 1]), output [batch, 2],
softmax over 0 and 180 degrees. OCR pipelines run it on every detected line
and turn the line over when it says 180.

Data: `ppocr_cls_data(n, seed)` renders n text lines (`ppocr.render_line`),
every other one turned by 180 degrees; `labels` holds 0 (upright) or 1 (turned),
so `onnxjpq eval --data` reads the file as labelled data. Metric: the decision
(top-1) agreement with the fp32 model, and accuracy against the labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from onnxjpq.zoo import ppocr

NAME = "ppocr_cls"
FILE = ppocr.CLS_FILE
INPUT = "x"
WIDTH = 192
HEIGHT = 48


def export_ppocr_cls(folder) -> Path:
    """Copy the direction classifier to `folder/ppocr_cls.onnx`."""
    return ppocr.copy_model(ppocr.model_file(FILE), folder, f"{NAME}.onnx")


def ppocr_cls_data(n: int, seed: int) -> dict[str, np.ndarray]:
    """n lines as `x` [n, 3, 48, 192], `labels` [n]: 1 where the line is upside down."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    while len(images) < n:
        image = ppocr.render_line(ppocr.random_line(rng, (2, 4)), rng, HEIGHT)
        turned = len(images) % 2
        images.append(ppocr.line_tensor(image.rotate(180) if turned else image, WIDTH, HEIGHT))
        labels.append(turned)
    return {INPUT: np.stack(images), "labels": np.array(labels, np.int64)}


def ppocr_cls_outputs(model, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The class probabilities [n, 2]."""
    return {"probabilities": ppocr.run(model, {INPUT: data[INPUT]}, batch=64)[0]}


def classifier_truth(outputs: dict[str, np.ndarray], data: dict[str, np.ndarray]) -> dict[str, float]:
    """Top-1 accuracy against `labels`, and the mean top-1 probability."""
    p = outputs["probabilities"]
    return {"accuracy": float(np.mean(p.argmax(-1) == data["labels"])), "confidence": float(p.max(-1).mean())}


def classifier_metric(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                      data: dict[str, np.ndarray]) -> dict[str, float]:
    """Top-1 agreement with the reference, accuracy against `labels`, and the largest
    change of a class probability."""
    ref, cand = reference["probabilities"], candidate["probabilities"]
    return {"top1_agreement": float(np.mean(ref.argmax(-1) == cand.argmax(-1))),
            "accuracy": float(np.mean(cand.argmax(-1) == data["labels"])),
            "max_abs_diff": float(np.abs(ref - cand).max())}


ppocr_cls_truth = classifier_truth
ppocr_cls_metric = classifier_metric
