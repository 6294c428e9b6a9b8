"""PP-OCRv4 mobile text-line recognizer (rapidocr-onnxruntime): reads rendered text lines.

Model: `ch_PP-OCRv4_rec_infer.onnx`, input `x` [batch, 3, 48, width] (a
line scaled to [-1, 1]), output [batch, width/8, 6625] per-step softmax over
the CTC blank, the 6623 characters of PaddleOCR's dictionary (kept in the
file's `character` metadata) and the space. Depthwise-separable PP-LCNetV3
convolutions, an SVTR attention neck (MatMul) and a 120x6625 classifier.

Data: `ppocr_rec_data(n, seed)` renders n lines of 1-4 common English words,
sometimes with a number (see `ppocr.render_line`), padded to width 320;
the rendered strings are under `text`. Metric: the greedy CTC decode a user
of PaddleOCR gets, scored as character accuracy (1 - edit distance /
length) against the rendered text (`ppocr_rec_truth`) or against the fp32
model's reading (`ppocr_rec_metric`), and the share of lines read identically.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from onnxjpq.zoo import ppocr

NAME = "ppocr_rec"
FILE = ppocr.REC_FILE
INPUT = "x"
WIDTH = 320
HEIGHT = 48


def export_ppocr_rec(folder) -> Path:
    """Copy the recognizer to `folder/ppocr_rec.onnx`."""
    return ppocr.copy_model(ppocr.model_file(FILE), folder, f"{NAME}.onnx")


@functools.cache
def characters() -> tuple[str, ...]:
    """Class index -> character: blank, the dictionary from the file's metadata, space."""
    import onnx

    model = onnx.load(str(ppocr.model_file(FILE)), load_external_data=False)
    table = {p.key: p.value for p in model.metadata_props}["character"].splitlines()
    return ("", *table, " ")


def ppocr_rec_data(n: int, seed: int) -> dict[str, np.ndarray]:
    """n rendered lines as `x` [n, 3, 48, 320] and their strings as `text` [n]."""
    rng = np.random.default_rng(seed)
    texts, images = [], []
    while len(texts) < n:
        text = ppocr.random_line(rng)
        image = ppocr.render_line(text, rng, HEIGHT)
        if image.width * HEIGHT / image.height > WIDTH:  # would be squeezed: draw another
            continue
        texts.append(text)
        images.append(ppocr.line_tensor(image, WIDTH, HEIGHT))
    return {INPUT: np.stack(images), "text": np.array(texts)}


def ppocr_rec_outputs(model, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The per-step class probabilities [n, steps, 6625]."""
    return {"probabilities": ppocr.run(model, {INPUT: data[INPUT]})[0]}


def ctc_decode(probabilities: np.ndarray) -> list[str]:
    """Greedy CTC: best class per step, repeats merged, blanks dropped, ends stripped."""
    table = characters()
    texts = []
    for best in probabilities.argmax(-1):
        keep = np.ones(len(best), bool)
        keep[1:] = best[1:] != best[:-1]
        texts.append("".join(table[i] for i in best[keep & (best != 0)]).strip())
    return texts


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        diagonal, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (ca != cb))
    return row[-1]


def char_accuracy(read: list[str], truth: list[str]) -> float:
    """1 - total edit distance / total length of `truth` (can go below 0 for long garbage)."""
    return 1.0 - sum(edit_distance(r, t) for r, t in zip(read, truth)) / max(1, sum(map(len, truth)))


def _scores(read: list[str], truth: list[str]) -> dict[str, float]:
    return {"char_accuracy": char_accuracy(read, truth),
            "line_accuracy": float(np.mean([r == t for r, t in zip(read, truth)]))}


def ppocr_rec_truth(outputs: dict[str, np.ndarray], data: dict[str, np.ndarray]) -> dict[str, float]:
    """Character and line accuracy of one model's reading against the rendered text,
    and the mean confidence (best class probability) of its steps."""
    read = ctc_decode(outputs["probabilities"])
    return {**_scores(read, [str(t) for t in data["text"]]),
            "confidence": float(outputs["probabilities"].max(-1).mean())}


def ppocr_rec_metric(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                     data: dict[str, np.ndarray]) -> dict[str, float]:
    """How the candidate's reading agrees with the reference's (`char_agreement`, `line_agreement`),
    and its own accuracy against the rendered text (`char_accuracy`)."""
    ref, cand = ctc_decode(reference["probabilities"]), ctc_decode(candidate["probabilities"])
    agree = _scores(cand, ref)
    return {"char_agreement": agree["char_accuracy"], "line_agreement": agree["line_accuracy"],
            "char_accuracy": char_accuracy(cand, [str(t) for t in data["text"]])}
