"""Bit-packed layer codes: the arrays of the packed format, and their reference decoder.

The packed format stores what METHODS.md §1 counts (`core.storage.storage_bits`):

- **Block**: the codes as `to_channels` rows, the channels holding a non-zero
  code sorted by width (stable), so each width's channels are contiguous rows.
  `rows` gives each output channel its block row; all-zero channels read one
  shared zero row after the block, so they store nothing.
- **Values**: one stream per code width w = ⌈log2(2m+1)⌉ (1..16), the codes of
  its rows as unsigned u = q + 2^(w−1). Since m ≤ 2^(w−1) − 1, 1 ≤ u < 2^w:
  u = 0 never holds a code, and marks the positions no stream fills.
- **Bit planes**: a w-bit stream is split into planes of 8, 4, 2 and 1 bits, the
  binary digits of w (3 = 2+1, 7 = 4+2+1, 12 = 8+4), most significant first.
  A b-bit plane packs k = 8/b fields a byte, so only a plane's last byte has
  unused bits. Fields are strided: field i of n lies in byte i mod B at slot
  i div B (B = ⌈n/k⌉ bytes), so a decoder's shifts broadcast over whole rows.
- **Sparsity** (pruned layers), the cheapest of: every code stored; a bitmask
  (one bit a position) with only the kept codes in the streams; a relative
  index of r-bit runs (r = 1..8) of zeros before each kept code, a gap of 2^r
  zeros or more taking filler entries (run 2^r − 1, then a zero code in the
  streams), each moving on 2^r positions, as `storage.index_bits` counts them.
- **Steps**: float32, one per tensor or one per block row.

Decoding (`decode`, and the ONNX graph of `rewrite/packed.py`) assembles the
block of u in uint8 (uint16 past 8 bits), then looks every u up in its row's
table T[r, u] = (u − 2^(w_r−1))·step_r (T[r, 0] = 0), then puts the rows back
in the weight's layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .quant import code_width, to_channels

PLANE_BITS = (8, 4, 2, 1)
MAX_WIDTH = 16  # int16 codes; wider codes are refused
RUN_WIDTHS = range(1, 9)  # the relative index's run widths, as storage.index_bits tries them


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
    block: tuple[int, int]  # (rows holding a non-zero code, weights per channel)
    values: tuple[Stream, ...]  # one per width, widths ascending; () when every code is 0
    channels: tuple[int, ...]  # block rows of each value stream's width
    sparsity: str  # "dense" (every code stored), "mask" or "runs"
    index: Stream | None  # the bitmask or the runs; None when dense
    steps: np.ndarray  # float32: () one step, or (block rows, 1); empty when every code is 0
    rows: np.ndarray | None  # block row of each output channel (the zero row after the block); None: identity

    @property
    def run_width(self) -> int | None:
        return self.index.width if self.sparsity == "runs" else None

    @property
    def zero_row(self) -> bool:
        """Some channel is all zero: the decoded block gets one zero row after its rows."""
        return self.rows is not None and self.rows.size > self.block[0]

    @property
    def table_width(self) -> int:
        """Bits of the largest u: a row's table has 2^table_width entries."""
        return max((s.width for s in self.values), default=0)

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
    >>> p.block, [s.width for s in p.values], p.rows.tolist(), decode(p).tolist()
    ((1, 3), [3], [0, 1], [[0.0, 1.5, -1.5], [0.0, 0.0, 0.0]])
    """
    codes = np.asarray(codes)
    shape = tuple(int(d) for d in codes.shape)
    axis = None if axis is None or codes.ndim == 0 else axis % codes.ndim
    chan = to_channels(codes, axis, groups)
    n_channels, per_channel = chan.shape
    step_array = np.asarray(steps, np.float32)
    if step_array.ndim and step_array.size != n_channels:
        raise ValueError(f"{step_array.size} steps for {n_channels} channels")
    widths = code_width(np.abs(chan).max(axis=1)) if chan.size else np.zeros(n_channels, np.int64)
    largest = int(widths.max(initial=0))
    if largest > MAX_WIDTH or (largest > 8 and 1 << largest > max(per_channel, 4096)):
        raise ValueError(f"codes up to ±{int(np.abs(chan).max())} need {largest} bits: too wide for the "
                         f"packed format (at most 8 bits, or {MAX_WIDTH} where 2^bits <= max(4096, weights a channel))")
    if not largest:
        return PackedLayer(shape, axis, groups, (0, per_channel), (), (), "dense", None,
                           np.zeros(0, np.float32), None)
    kept = np.flatnonzero(widths)
    order = kept[np.argsort(widths[kept], kind="stable")]
    stream_widths, channels = np.unique(widths[order], return_counts=True)
    rows = np.full(n_channels, order.size, np.int64)
    rows[order] = np.arange(order.size)
    identity = order.size == n_channels and np.array_equal(order, np.arange(n_channels))
    block_steps = step_array[order].reshape(-1, 1) if step_array.ndim else step_array
    values, sparsity, index = _pack_block(chan[order].reshape(-1), stream_widths.tolist(),
                                          (channels * per_channel).tolist())
    return PackedLayer(shape, axis, groups, (order.size, per_channel), values, tuple(channels.tolist()),
                       sparsity, index, block_steps, None if identity else rows.astype(_index_dtype(order.size)))


def _index_dtype(largest: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.int32):
        if largest <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"{largest} channels")


def _pack_block(flat: np.ndarray, widths: list[int], sizes: list[int]
                ) -> tuple[tuple[Stream, ...], str, Stream | None]:
    """The value streams and index of the block's codes `flat`: the cheapest of dense, mask, runs.

    Width widths[i] covers sizes[i] positions of `flat`, in order.
    """
    starts = np.cumsum([0] + sizes[:-1]).tolist()
    positions = np.flatnonzero(flat)

    def streams(entries: np.ndarray, entry_codes: np.ndarray) -> tuple[Stream, ...]:
        cuts = np.searchsorted(entries, starts + [flat.size])
        return tuple(pack_stream(entry_codes[lo:hi].astype(np.int64) + (1 << (w - 1)), w)
                     for w, lo, hi in zip(widths, cuts[:-1], cuts[1:]))

    def value_bytes(entries: np.ndarray) -> int:
        counts = np.diff(np.searchsorted(entries, starts + [flat.size]))
        return sum(stream_bytes(w, int(n)) for w, n in zip(widths, counts))

    dense = sum(stream_bytes(w, n) for w, n in zip(widths, sizes))
    if positions.size == flat.size:  # nothing pruned: no index can help
        return streams(np.arange(flat.size), flat), "dense", None
    mask = stream_bytes(1, flat.size) + value_bytes(positions)
    run_width = _best_run_width(positions, widths, np.diff(np.searchsorted(positions, starts + [flat.size])))
    runs, kept_at = _runs(positions, run_width)
    entry_at = np.cumsum(runs.astype(np.int64) + 1) - 1
    relative = stream_bytes(run_width, runs.size) + value_bytes(entry_at)
    best = min(dense, mask, relative)
    if best == dense:
        return streams(np.arange(flat.size), flat), "dense", None
    if best == mask:
        return streams(positions, flat[positions]), "mask", pack_stream(flat != 0, 1)
    entry_codes = np.zeros(runs.size, flat.dtype)
    entry_codes[kept_at] = flat[positions]
    return streams(entry_at, entry_codes), "runs", pack_stream(runs, run_width)


def _best_run_width(positions: np.ndarray, widths: list[int], kept_counts: np.ndarray) -> int:
    """The run width r minimising storage.index_bits' relative-index cost."""
    if not positions.size:
        return 1
    gaps = np.diff(positions, prepend=-1) - 1
    mean_width = sum(w * int(n) for w, n in zip(widths, kept_counts)) / positions.size
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


def block_fields(packed: PackedLayer) -> np.ndarray:
    """The block of u, with the zero row when some channel is all zero (u = 0: zero)."""
    parts = [unpack_stream(s) for s in packed.values]
    values = np.concatenate(parts) if parts else np.zeros(0, np.uint32)
    size = math.prod(packed.block)
    if packed.sparsity == "dense":
        flat = values
    elif packed.sparsity == "mask":  # each position's rank among the kept (1-based), 0 if pruned
        mask = unpack_stream(packed.index).astype(np.int64)
        flat = np.concatenate([[0], values])[np.cumsum(mask) * mask]
    else:
        flat = np.zeros(size, np.uint32)
        flat[np.cumsum(unpack_stream(packed.index).astype(np.int64) + 1) - 1] = values
    block = flat.reshape(packed.block)
    if packed.zero_row:
        block = np.concatenate([block, np.zeros((1, packed.block[1]), block.dtype)])
    return block


def row_offsets(packed: PackedLayer) -> np.ndarray:
    """2^(w−1) of each block row (0 for the zero row), as float32 [rows, 1]."""
    offsets = np.repeat([float(1 << (s.width - 1)) for s in packed.values], packed.channels)
    extra = [0.0] if packed.zero_row else []
    return np.concatenate([offsets, extra]).astype(np.float32).reshape(-1, 1)


def row_steps(packed: PackedLayer) -> np.ndarray:
    """The steps broadcasting to the block's rows: () or [rows, 1] (0 for the zero row)."""
    if packed.steps.ndim == 0 or not packed.zero_row:
        return packed.steps
    return np.concatenate([packed.steps, np.zeros((1, 1), np.float32)])


def tables(packed: PackedLayer) -> np.ndarray:
    """T[r, u] = (u − 2^(w_r−1))·step_r, T[r, 0] = 0: float32 [rows, 2^table_width]."""
    u = np.arange(1 << packed.table_width, dtype=np.float32)
    return np.where(u == 0, np.float32(0), u - row_offsets(packed)) * row_steps(packed)


def _by_channel(packed: PackedLayer, block: np.ndarray) -> np.ndarray:
    """Block rows as output channels (to_channels order)."""
    return block if packed.rows is None else block[packed.rows.astype(np.int64)]


def _weight_layout(packed: PackedLayer, channels: np.ndarray) -> np.ndarray:
    """Output-channel rows back in the weight's layout (undoes to_channels)."""
    view, perm = channel_view(packed.shape, packed.axis, packed.groups)
    return channels.reshape(view).transpose(perm).reshape(packed.shape)


def decode_codes(packed: PackedLayer) -> np.ndarray:
    """The integer codes `encode` was given (int32)."""
    if not packed.values:
        return np.zeros(packed.shape, np.int32)
    u = block_fields(packed).astype(np.int32)
    codes = np.where(u == 0, 0, u - row_offsets(packed).astype(np.int32))
    return _weight_layout(packed, _by_channel(packed, codes))


def decode(packed: PackedLayer) -> np.ndarray:
    """The float32 weights: each u looked up in its row's table, as the ONNX decoder does."""
    if not packed.values:
        return np.zeros(packed.shape, np.float32)
    table = _by_channel(packed, tables(packed))
    u = _by_channel(packed, block_fields(packed)).astype(np.int64)
    return _weight_layout(packed, np.take_along_axis(table, u, axis=1))


def describe(packed: PackedLayer) -> str:
    """A short label of the storage: widths and index, e.g. "packed3-5+mask".

    >>> describe(encode(np.array([0, 0, 1, 0, 0, 0, 0, 0, 0, -1] * 8), None))
    'packed2+runs3'
    """
    widths = [s.width for s in packed.values]
    label = "packed" + ("0" if not widths else str(widths[0]) if len(widths) == 1
                        else f"{widths[0]}-{widths[-1]}")
    return label + {"dense": "", "mask": "+mask"}.get(packed.sparsity, f"+runs{packed.run_width}")
