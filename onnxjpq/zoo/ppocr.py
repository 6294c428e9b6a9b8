"""PaddleOCR's mobile models, as rapidocr-onnxruntime ships them, and text images to run them on.

The PyPI package `rapidocr-onnxruntime` (1.4.4) carries three ONNX models
converted from PaddlePaddle (paddle2onnx; weights stored as `Constant` nodes):

- `ch_PP-OCRv4_det_infer.onnx` (4.7 MB): the DB text detector (PP-LCNetV3
  backbone, depthwise-separable) -> `zoo.ppocr_det`;
- `ch_PP-OCRv4_rec_infer.onnx` (10.9 MB): the CTC text-line recognizer
  (PP-LCNetV3 + SVTR neck, 6625 classes) -> `zoo.ppocr_rec`;
- `ch_ppocr_mobile_v2.0_cls_infer.onnx` (0.6 MB): the 0/180 degree
  text-line direction classifier (MobileNetV3) -> `zoo.ppocr_cls`.

Install it with `--no-deps`: only the model files are used, never the
package's own code (which needs OpenCV, Shapely and pyclipper); the
files are located without importing the package.

No images ship with the package, so the text is rendered here with Pillow's
built-in scalable font (Aileron Regular, in every Pillow with FreeType), never
a system font: the same pixels wherever the same Pillow runs. The words are
common English words and numbers, all in the recognizer's dictionary.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import numpy as np

from onnxjpq.errors import ModelError

DISTRIBUTION = "rapidocr-onnxruntime"
PACKAGE = "rapidocr_onnxruntime"

DET_FILE = "ch_PP-OCRv4_det_infer.onnx"
REC_FILE = "ch_PP-OCRv4_rec_infer.onnx"
CLS_FILE = "ch_ppocr_mobile_v2.0_cls_infer.onnx"

WORDS = (
    "the of and to in is was for on that with as by at from his her they this are have be had not but "
    "which one were all their there been when who will more would into time year people way day man "
    "thing woman life child world school state family student group country problem hand part place "
    "case week company system program question work government number night point home water room "
    "mother area money story fact month lot right study book eye job word business issue side kind "
    "head house service friend father power hour game line end member law car city community name "
    "president team minute idea kid body information back parent face others level office door health "
    "person art war history party result change morning reason research girl guy moment air teacher "
    "force education river stone light paper seven north table green music window garden orange "
    "silver market planet simple letter winter summer station bridge coffee yellow purple engine"
).split()


def package_file(package: str, distribution: str, relative: str) -> Path:
    """A file shipped inside an installed package, found without importing the package.

    Raises `ModelError` naming the pip command when the package or file is missing.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"this zoo model's weights come from the PyPI package {distribution}: "
                         f"pip install --no-deps {distribution}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise ModelError(f"{path} is missing; reinstall {distribution}")
    return path


def available(package: str) -> bool:
    """Whether `package` is installed (without importing it)."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def model_file(name: str) -> Path:
    """One of the three ONNX files of rapidocr-onnxruntime."""
    return package_file(PACKAGE, DISTRIBUTION, f"models/{name}")


def copy_model(src: Path, folder, name: str) -> Path:
    """Copy a shipped .onnx file to `folder/name` (byte-identical, so deterministic)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / name
    data = src.read_bytes()
    if not (dst.is_file() and dst.read_bytes() == data):
        write_bytes(dst, data)
    return dst


def write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file beside it (never a half-written file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@functools.cache
def font(size: int):
    """Pillow's built-in scalable font at `size` px."""
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def random_line(rng: np.random.Generator, words: tuple[int, int] = (1, 4), number: float = 0.4) -> str:
    """A few lowercase words, sometimes one capitalised, sometimes followed by a number."""
    chosen = [WORDS[i] for i in rng.integers(len(WORDS), size=int(rng.integers(words[0], words[1] + 1)))]
    if rng.random() < 0.3:
        chosen[0] = chosen[0].capitalize()
    if rng.random() < number:
        chosen.append(str(int(rng.integers(1, 10000))))
    return " ".join(chosen)


def render_line(text: str, rng: np.random.Generator, height: int = 48):
    """`text` as a grayscale line image `height` px high: dark ink on a light ground, a little noise."""
    from PIL import Image, ImageDraw

    size = int(rng.integers(int(height * 0.55), int(height * 0.72)))
    f = font(size)
    left, top, right, bottom = f.getbbox(text)
    margin = int(rng.integers(4, 12))
    image = Image.new("L", (right - left + 2 * margin, height), int(rng.integers(215, 256)))
    ImageDraw.Draw(image).text((margin - left, (height - (bottom + top)) // 2), text,
                               fill=int(rng.integers(0, 70)), font=f)
    pixels = np.asarray(image, np.float32) + rng.normal(0, 4, (image.height, image.width))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def line_tensor(image, width: int, height: int = 48) -> np.ndarray:
    """PaddleOCR's line preprocessing: resize to `height` keeping the aspect (at most `width`),
    scale to [-1, 1], pad on the right with 0; [3, height, width] float32."""
    from PIL import Image

    w = min(width, int(np.ceil(height * image.width / image.height)))
    resized = image.convert("L").resize((w, height), Image.BILINEAR)
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :w] = (np.asarray(resized, np.float32) / 255 - 0.5) / 0.5
    return out


def imagenet_tensor(image) -> np.ndarray:
    """An RGB image as the BGR, ImageNet-normalised [3, h, w] float32 PaddleOCR's detector reads."""
    pixels = np.asarray(image.convert("RGB"), np.float32)[:, :, ::-1] / 255
    pixels = (pixels - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), np.float32)


def run(model, feeds: dict[str, np.ndarray], batch: int = 16) -> list[np.ndarray]:
    """All outputs of `model` (path, bytes or ModelProto) on `feeds`, in batches along axis 0."""
    from onnxjpq.runtime.sessions import session

    sess = session(model)
    names = [i.name for i in sess.get_inputs()]
    count = len(feeds[names[0]])
    parts = [sess.run(None, {k: feeds[k][i:i + batch] for k in names}) for i in range(0, count, batch)]
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]
