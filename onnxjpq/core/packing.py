"""Bit-packed layer codes: the arrays of the packed format, and their reference decoder.

The packed format stores what METHODS.md §1 counts (`core.storage.storage_bits`):

- **Values**: one stream per code width w = ⌈log2(2m+1)⌉ (1..16). A stream holds
  the codes of the channels of that width as unsigned offsets u = q + 2^(w−1).
  Since m ≤ 2^(w−1) − 1, 0 ≤ u < 2^w. A channel whose codes are all 0 (w = 0)
  stores nothing.
- **Bit planes**: a w-bit stream is split into planes of 8, 4, 2 and 1 bits, the
  binary digits of w (3 = 2+1, 7 = 4+2+1, 12 = 8+4), most significant first.
  A plane of b bits packs k = 8/b fields per byte, so only the last byte of a
  plane has unused bits. Fields are strided: field i of n lies in byte i mod B
  at slot i div B (B = ⌈n/k⌉ bytes), so a decoder's shifts broadcast over whole
  rows of bytes.
- **Sparsity** (pruned layers): the cheaper of
  - a bitmask, one bit per position (a 1-bit stream);
  - a relative index: r-bit runs (r = 1..8), the zeros before each kept code. A
    gap of 2^r or more zeros takes filler entries (run 2^r − 1, then a zero code
    in the value streams), each moving on 2^r positions, as `storage.index_bits`
    counts them.
  Then the value streams hold only the kept codes (and the fillers' zeros).
  Storing every code is used when that is cheaper still.
- **Steps**: float32, one per tensor or one per non-zero channel.

Layout: when all channels have one width, the codes are streamed in the weight's
own C order. Otherwise they are streamed channel by channel (`to_channels`
order), channels sorted by width (stable), so each width's channels are one
contiguous block. `rows` then gives, for each output channel, its row in the
decoded block; all-zero channels read one shared zero row after the block.

Decoding (`decode`, and the ONNX graph of `rewrite/packed.py`) runs:
planes → fields → u − 2^(w−1) → concatenation → scatter to the kept positions
→ × step → rows → the weight's shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .quant import code_width, to_channels

PLANE_BITS = (8, 4, 2, 1)
MAX_WIDTH = 16  # int16 codes; wider codes are refused
RUN_WIDTHS = range(1, 9)  # the relative index's run widths, as storage.index_bits tries them
SPARSITIES = ("dense", "mask", "runs")


def plane_widths(width: int) -> tuple[int, ...]:
    """Bits of each plane of a `width`-bit stream, most significant plane first.

    >>> plane_widths(7), plane_widths(8), plane_widths(12)
    ((4, 2, 1), (8,), (8, 4))
    """
    planes, rest = [], width
    for bits in PLANE_BITS:
        while rest >= bits:
            planes.append(bits)
            rest -= bits
    return tuple(planes)


def plane_shifts(width: int) -> tuple[int, ...]:
    """Where each plane's bits sit in the field: the bits of the planes after it.

    >>> plane_shifts(7)
    (3, 1, 0)
    """
    widths = plane_widths(width)
    return tuple(sum(widths[i + 1:]) for i in range(len(widths)))


def stream_bytes(width: int, count: int) -> int:
    """Bytes of `count` fields of `width` bits.

    >>> stream_bytes(3, 10), stream_bytes(8, 10), stream_bytes(0, 10)
    (5, 10, 0)
    """
    return sum(math.ceil(count * bits / 8) for bits in plane_widths(width))


@dataclass(frozen=True)
class Stream:
    """`count` unsigned fields of `width` bits, as bit planes packed in bytes."""

    width: int
    count: int
    planes: tuple[np.ndarray, ...]  # uint8, one per plane_widths(width)

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.planes)


def pack_stream(fields: np.ndarray, width: int) -> Stream:
    """Pack unsigned `fields` (each < 2^width) into bit planes.

    >>> s = pack_stream(np.array([5, 0, 7, 2]), 3)
    >>> [p.tolist() for p in s.planes], unpack_stream(s).tolist()
    ([[114], [5]], [5, 0, 7, 2])
    """
    if not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"stream width must be 1..{MAX_WIDTH}, got {width}")
    fields = np.asarray(fields, np.uint32).reshape(-1)
    planes = []
    for bits, shift in zip(plane_widths(width), plane_shifts(width)):
        per_byte = 8 // bits
        n_bytes = -(-fields.size // per_byte)
        slots = np.zeros(per_byte * n_bytes, np.uint32)
        slots[:fields.size] = (fields >> shift) & ((1 << bits) - 1)
        slots = slots.reshape(per_byte, n_bytes)
        packed = np.zeros(n_bytes, np.uint32)
        for slot in range(per_byte):
            packed |= slots[slot] << (bits * slot)
        planes.append(packed.astype(np.uint8))
    return Stream(width, int(fields.size), tuple(planes))


def unpack_stream(stream: Stream) -> np.ndarray:
    """The fields of `stream`, as uint32."""
    fields = np.zeros(stream.count, np.uint32)
    for plane, bits, shift in zip(stream.planes, plane_widths(stream.width), plane_shifts(stream.width)):
        slots = np.arange(8 // bits, dtype=np.uint32)[:, None] * bits
        values = (plane[None, :].astype(np.uint32) >> slots) & ((1 << bits) - 1)
        fields |= values.reshape(-1)[:stream.count] << shift
    return fields


@dataclass(frozen=True)
class PackedLayer:
    """A layer's codes as the packed format stores them (see the module docstring)."""

    shape: tuple[int, ...]
    axis: int | None
    groups: int
    order: str  # "weight": C order of `shape`; "channel": to_channels rows, sorted by width
    block: tuple[int, ...]  # the shape decoded values take before `rows`: `shape`, or (rows, per channel)
    values: tuple[Stream, ...]  # one per width, widths ascending; () when every code is 0
    sparsity: str  # "dense" (every code stored), "mask" or "runs"
    index: Stream | None  # the bitmask or the runs; None when dense
    steps: np.ndarray  # float32, broadcasting to `block`; empty when every code is 0
    rows: np.ndarray | None  # "channel" order: block row of each output channel; None = identity

    @property
    def run_width(self) -> int | None:
        return self.index.width if self.sparsity == "runs" else None

    def arrays(self) -> list[np.ndarray]:
        """Every array stored, in a fixed order."""
        out = [p for s in self.values for p in s.planes]
        out += list(self.index.planes) if self.index is not None else []
        out += [self.steps] if self.steps.size else []
        return out + ([self.rows] if self.rows is not None else [])


def packed_bytes(packed: PackedLayer) -> int:
    """Bytes of the arrays `packed` stores (planes, steps, rows)."""
    return sum(a.nbytes for a in packed.arrays())


def encode(codes: np.ndarray, axis: int | None, groups: int = 1,
           steps: float | np.ndarray = 1.0) -> PackedLayer:
    """Pack a layer's symmetric integer codes.

    `axis`/`groups` name the output channels as `quant.to_channels` does; `steps`
    is one float or one per output channel (in to_channels order).

    >>> p = encode(np.array([[0, 3, -3], [0, 0, 0]]), axis=0, steps=0.5)
    >>> p.order, [s.width for s in p.values], p.sparsity, decode(p).tolist()
    ('channel', [3], 'dense', [[0.0, 1.5, -1.5], [0.0, 0.0, 0.0]])
    """
    codes = np.asarray(codes)
    shape = tuple(int(d) for d in codes.shape)
    axis = None if axis is None or codes.ndim == 0 else axis % codes.ndim
    chan = to_channels(codes, axis, groups)
    n_channels = chan.shape[0]
    step_array = np.asarray(steps, np.float32)
    if step_array.ndim and step_array.size != n_channels:
        raise ValueError(f"{step_array.size} steps for {n_channels} channels")
    widths = (code_width(np.abs(chan).max(axis=1)) if chan.size else np.zeros(n_channels, np.int64))
    if widths.max(initial=0) > MAX_WIDTH:
        raise ValueError(f"codes up to ±{int(np.abs(chan).max())} need {int(widths.max())} bits; "
                         f"the packed format holds at most {MAX_WIDTH}")
    if not widths.any():
        return PackedLayer(shape, axis, groups, "weight", shape, (), "dense", None,
                           np.zeros(0, np.float32), None)
    if np.all(widths == widths[0]) and not (step_array.ndim and groups > 1):
        flat, bounds = codes.reshape(-1), [(int(widths[0]), 0, codes.size)]
        view = [1] * codes.ndim
        if axis is not None:
            view[axis] = -1
        block_steps = step_array.reshape(view) if step_array.ndim else step_array
        return _pack_values(shape, axis, groups, "weight", shape, flat, bounds, block_steps, None)
    kept = np.flatnonzero(widths)
    order = kept[np.argsort(widths[kept], kind="stable")]
    per_channel = chan.shape[1]
    bounds, start = [], 0
    for width in np.unique(widths[order]):
        stop = start + int(np.count_nonzero(widths == width)) * per_channel
        bounds.append((int(width), start, stop))
        start = stop
    rows = np.full(n_channels, order.size, np.int64)
    rows[order] = np.arange(order.size)
    rows = None if order.size == n_channels and np.array_equal(order, np.arange(n_channels)) else \
        rows.astype(_index_dtype(order.size))
    block_steps = step_array[order].reshape(-1, 1) if step_array.ndim else step_array
    return _pack_values(shape, axis, groups, "channel", (order.size, per_channel),
                        chan[order].reshape(-1), bounds, block_steps, rows)


def _index_dtype(largest: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.int32):
        if largest <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"{largest} channels")


def _pack_values(shape, axis, groups, order, block, flat, bounds, steps, rows) -> PackedLayer:
    """Choose dense, bitmask or runs for the codes `flat` (block order) and pack them.

    `bounds` are (width, start, stop): each width's range of positions in `flat`.
    """
    positions = np.flatnonzero(flat)
    starts = [start for _, start, _ in bounds]
    dense = sum(stream_bytes(w, stop - start) for w, start, stop in bounds)
    if positions.size == flat.size:  # nothing pruned: no index can help
        values = tuple(pack_stream(flat[start:stop].astype(np.int64) + (1 << (w - 1)), w)
                       for w, start, stop in bounds)
        return PackedLayer(shape, axis, groups, order, tuple(block), values, "dense", None,
                           np.asarray(steps, np.float32), rows)
    kept_counts = np.diff(np.searchsorted(positions, starts + [flat.size]))
    mask = stream_bytes(1, flat.size) + sum(stream_bytes(w, int(n)) for (w, _, _), n in zip(bounds, kept_counts))
    run_width = _best_run_width(positions, bounds, kept_counts)
    runs, kept_at = _runs(positions, run_width) if positions.size else (np.zeros(0, np.uint32), positions)
    entry_at = np.cumsum(runs.astype(np.int64) + 1) - 1
    entry_counts = np.diff(np.searchsorted(entry_at, starts + [flat.size]))
    relative = stream_bytes(run_width, runs.size) + sum(
        stream_bytes(w, int(n)) for (w, _, _), n in zip(bounds, entry_counts))
    best = min(dense, mask, relative)
    if best == dense:
        sparsity, index, entries, entry_codes = "dense", None, np.arange(flat.size), flat
    elif best == mask:
        sparsity, index = "mask", pack_stream(flat != 0, 1)
        entries, entry_codes = positions, flat[positions]
    else:
        sparsity, index = "runs", pack_stream(runs, run_width)
        entry_codes = np.zeros(runs.size, flat.dtype)
        entry_codes[kept_at] = flat[positions]
        entries = entry_at
    cuts = np.searchsorted(entries, starts + [flat.size])
    values = tuple(pack_stream(entry_codes[lo:hi].astype(np.int64) + (1 << (w - 1)), w)
                   for (w, _, _), lo, hi in zip(bounds, cuts[:-1], cuts[1:]))
    return PackedLayer(shape, axis, groups, order, tuple(block), values, sparsity, index,
                       np.asarray(steps, np.float32), rows)


def _best_run_width(positions: np.ndarray, bounds, kept_counts) -> int:
    """The run width r minimising storage.index_bits' relative-index cost."""
    if not positions.size:
        return 1
    gaps = np.diff(positions, prepend=-1) - 1
    mean_width = sum(w * int(n) for (w, _, _), n in zip(bounds, kept_counts)) / positions.size
    costs = []
    for r in RUN_WIDTHS:
        fillers = int((gaps >> r).sum())
        costs.append((positions.size + fillers) * r + fillers * mean_width)
    return RUN_WIDTHS[int(np.argmin(costs))]


def _runs(positions: np.ndarray, run_width: int) -> tuple[np.ndarray, np.ndarray]:
    """The runs of zeros before each kept position, fillers included, and each kept entry's index.

    >>> runs, kept_at = _runs(np.array([1, 7]), 2)
    >>> runs.tolist(), kept_at.tolist()
    ([1, 3, 1], [0, 2])
    """
    gaps = np.diff(positions, prepend=-1) - 1
    fillers = gaps >> run_width
    kept_at = np.arange(positions.size) + np.cumsum(fillers)
    runs = np.full(positions.size + int(fillers.sum()), (1 << run_width) - 1, np.uint32)
    runs[kept_at] = gaps - (fillers << run_width)
    return runs, kept_at


def channel_view(shape: tuple[int, ...], axis: int | None, groups: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(view, perm) with chan.reshape(view).transpose(perm).reshape(shape) undoing to_channels.

    >>> channel_view((4, 6), 1, 1)
    ((6, 4), (1, 0))
    >>> channel_view((4, 3, 5, 5), 1, 2)
    ((2, 3, 2, 25), (0, 2, 1, 3))
    """
    if axis is None or not shape:
        return shape, tuple(range(len(shape)))
    if groups > 1 and axis == 1:
        c_in, per_group = shape[0], shape[1]
        return (groups, per_group, c_in // groups, math.prod(shape[2:])), (0, 2, 1, 3)
    moved = (shape[axis],) + shape[:axis] + shape[axis + 1:]
    return moved, tuple(0 if i == axis else i + 1 if i < axis else i for i in range(len(shape)))


def _block_codes(packed: PackedLayer) -> np.ndarray:
    """The codes in block order and shape, before the steps and rows (the ONNX decoder's steps)."""
    parts = [unpack_stream(s).astype(np.int32) - (1 << (s.width - 1)) for s in packed.values]
    values = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    if packed.sparsity == "dense":
        flat = values if values.size else np.zeros(math.prod(packed.block), np.int32)
    elif packed.sparsity == "mask":  # each position's rank among the kept, 0 if pruned
        mask = unpack_stream(packed.index).astype(np.int64)
        flat = np.concatenate([[0], values])[np.cumsum(mask) * mask]
    else:
        flat = np.zeros(math.prod(packed.block), np.int32)
        flat[np.cumsum(unpack_stream(packed.index).astype(np.int64) + 1) - 1] = values
    return flat.reshape(packed.block)


def _restore(packed: PackedLayer, block: np.ndarray) -> np.ndarray:
    """The block in the weight's shape: zero row and rows for channel order, then the view."""
    if packed.order == "weight":
        return block.reshape(packed.shape)
    n_channels = to_channels(np.empty(packed.shape, np.bool_), packed.axis, packed.groups).shape[0]
    if block.shape[0] < n_channels:
        block = np.concatenate([block, np.zeros((1, block.shape[1]), block.dtype)])
    if packed.rows is not None:
        block = block[packed.rows.astype(np.int64)]
    view, perm = channel_view(packed.shape, packed.axis, packed.groups)
    return block.reshape(view).transpose(perm).reshape(packed.shape)


def decode_codes(packed: PackedLayer) -> np.ndarray:
    """The integer codes `encode` was given (int32)."""
    return _restore(packed, _block_codes(packed))


def decode(packed: PackedLayer) -> np.ndarray:
    """The float32 weights: codes × steps, computed as the ONNX decoder does."""
    if not packed.values:
        return np.zeros(packed.shape, np.float32)
    return _restore(packed, _block_codes(packed).astype(np.float32) * packed.steps)


def describe(packed: PackedLayer) -> str:
    """A short label of the storage: widths and index, e.g. "packed3-5+mask".

    >>> describe(encode(np.array([0, 0, 1, 0, 0, 0, 0, 0, 0, -1] * 8), None))
    'packed2+runs3'
    """
    widths = [s.width for s in packed.values]
    label = "packed" + ("0" if not widths else str(widths[0]) if len(widths) == 1
                        else f"{widths[0]}-{widths[-1]}")
    return label + {"dense": "", "mask": "+mask"}.get(packed.sparsity, f"+runs{packed.run_width}")
