"""Bit-packed layer codes: the arrays of the packed format, and their reference decoder.

The packed format stores what METHODS.md §1 counts (`core.storage.storage_bits`):

- **Block**: the codes as `to_channels` rows, the channels holding a non-zero
  code sorted by width (stable), so each width's channels are contiguous rows.
  `rows` gives each output channel its block row; all-zero channels read one
  shared zero row after the block, so they store nothing.
- **Values**: one stream per code width w = ⌈log2(2m+1)⌉ (1..16), the codes of
  its rows zigzagged, u = 2q for q ≥ 0 and −2q − 1 for q < 0 (0, −1, 1, −2, ... as
  0, 1, 2, 3, ...). Since |q| ≤ m ≤ 2^(w−1) − 1, u ≤ 2^w − 2 fits in w bits, and
  u = 0 is q = 0: the positions no stream fills read as zero, and one table of
  code values serves every width.
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
table T[r, u] = unzigzag(u)·step_r, then puts the rows back in the weight's
layout. `group_blocks` lays several layers out as the ONNX decoder stores them:
the blocks of the layers of one sparsity kind as one block, so that one index and
one expansion serve them all.
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

    def value_bytes(entries: np.ndarray) -> int:
        counts = np.diff(np.searchsorted(entries, starts + [flat.size]))
        return sum(stream_bytes(w, int(n)) for w, n in zip(widths, counts))

    dense = sum(stream_bytes(w, n) for w, n in zip(widths, sizes))
    run_width = _best_run_width(positions, widths, np.diff(np.searchsorted(positions, starts + [flat.size])))
    if positions.size == flat.size:  # nothing pruned: no index can help
        kind = "dense"
    else:
        mask = stream_bytes(1, flat.size) + value_bytes(positions)
        runs, _ = _runs(positions, run_width)
        relative = stream_bytes(run_width, runs.size) + value_bytes(np.cumsum(runs.astype(np.int64) + 1) - 1)
        kind = min((dense, "dense"), (mask, "mask"), (relative, "runs"))[1]  # ties: the simpler kind
    values, index = _layout(zigzag(flat), widths, sizes, kind, run_width)
    return (tuple(pack_stream(v.fields, v.width) for v in values), kind,
            None if index is None else pack_stream(index.fields, index.width))


@dataclass(frozen=True)
class Segment:
    """Fields of one width, not yet packed: a value stream's u, or an index's bits or runs."""

    width: int
    fields: np.ndarray


def _layout(flat: np.ndarray, widths: list[int], sizes: list[int], kind: str, run_width: int | None = None
            ) -> tuple[tuple[Segment, ...], Segment | None]:
    """The value segments (one per width span of `flat`, the block's u) and the index of `kind`."""
    starts = np.cumsum([0] + list(sizes[:-1])).tolist()
    positions = np.flatnonzero(flat)
    index = None
    if kind == "dense":
        entries, entry_u = np.arange(flat.size), flat
    elif kind == "mask":
        entries, entry_u, index = positions, flat[positions], Segment(1, (flat != 0).astype(np.uint32))
    else:
        if run_width is None:
            run_width = _best_run_width(positions, widths, np.diff(np.searchsorted(positions, starts + [flat.size])))
        runs, kept_at = _runs(positions, run_width)
        entries = np.cumsum(runs.astype(np.int64) + 1) - 1
        entry_u = np.zeros(runs.size, np.uint32)
        entry_u[kept_at] = flat[positions]
        index = Segment(run_width, runs)
    cuts = np.searchsorted(entries, starts + [flat.size])
    values = tuple(Segment(w, np.asarray(entry_u[lo:hi], np.uint32)) for w, lo, hi in zip(widths, cuts[:-1], cuts[1:]))
    return values, index


def zigzag(codes: np.ndarray) -> np.ndarray:
    """Signed codes as unsigned fields: 0, -1, 1, -2, 2, ... -> 0, 1, 2, 3, 4, ...

    >>> zigzag(np.array([0, -1, 1, -2, 2])).tolist(), unzigzag(np.arange(5)).tolist()
    ([0, 1, 2, 3, 4], [0, -1, 1, -2, 2])
    """
    q = np.asarray(codes, np.int64)
    return np.where(q < 0, -2 * q - 1, 2 * q).astype(np.uint32)


def unzigzag(fields: np.ndarray) -> np.ndarray:
    """The signed codes of zigzagged `fields` (int64)."""
    u = np.asarray(fields, np.int64)
    return np.where(u & 1, -((u + 1) >> 1), u >> 1)


MAX_GROUP = 1 << 28  # block positions of one group: its int32 ranks and positions stay far from overflow


@dataclass(frozen=True)
class Group:
    """Layers of one sparsity kind stored as one block, their blocks end to end."""

    sparsity: str
    members: tuple[int, ...]  # indices into the layers grouped
    sizes: tuple[int, ...]  # block positions of each member (its zero row not stored)
    values: tuple[Segment, ...]  # each member's value streams, member by member, widths ascending
    index: Segment | None


def group_blocks(layers: list[PackedLayer]) -> list[Group]:
    """The layers holding a non-zero code, grouped by the sparsity kind each chose for itself
    (dense, mask, runs) and by block type (uint8, or uint16 for codes over 8 bits); a group
    closes at MAX_GROUP positions, and a runs group picks one run width.

    The segments of a group hold exactly the u its members' streams hold, re-indexed over the
    joined block: a mask is the members' masks end to end, runs restart nowhere.
    """
    groups = []
    for kind, wide in ((k, w) for k in ("dense", "mask", "runs") for w in (False, True)):
        batch, size = [], 0
        for i, packed in enumerate(layers):
            if not packed.values or packed.sparsity != kind or (packed.table_width > 8) != wide:
                continue
            if batch and size + math.prod(packed.block) > MAX_GROUP:
                groups.append(_group(kind, batch, layers))
                batch, size = [], 0
            batch.append(i)
            size += math.prod(packed.block)
        if batch:
            groups.append(_group(kind, batch, layers))
    return groups


def _group(kind: str, members: list[int], layers: list[PackedLayer]) -> Group:
    flats = [block_fields(layers[i])[:layers[i].block[0]].reshape(-1) for i in members]
    widths = [s.width for i in members for s in layers[i].values]
    sizes = [c * layers[i].block[1] for i in members for c in layers[i].channels]
    values, index = _layout(np.concatenate(flats), widths, sizes, kind)
    return Group(kind, tuple(members), tuple(f.size for f in flats), values, index)


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


def row_steps(packed: PackedLayer) -> np.ndarray:
    """The steps broadcasting to the block's rows: () or [rows, 1] (0 for the zero row)."""
    if packed.steps.ndim == 0 or not packed.zero_row:
        return packed.steps
    return np.concatenate([packed.steps, np.zeros((1, 1), np.float32)])


def tables(packed: PackedLayer) -> np.ndarray:
    """T[r, u] = unzigzag(u)·step_r: float32 [rows, 2^table_width] (or [1, ...] for one step)."""
    values = unzigzag(np.arange(1 << packed.table_width)).astype(np.float32)
    return (values * row_steps(packed)).reshape(-1, values.size)


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
    return _weight_layout(packed, _by_channel(packed, unzigzag(block_fields(packed)).astype(np.int32)))


def decode(packed: PackedLayer) -> np.ndarray:
    """The float32 weights: each u looked up in its row's table, as the ONNX decoder does."""
    if not packed.values:
        return np.zeros(packed.shape, np.float32)
    table = tables(packed)
    u = _by_channel(packed, block_fields(packed)).astype(np.int64)
    if table.shape[0] == 1:  # one step: one table for every row
        return _weight_layout(packed, table[0][u])
    return _weight_layout(packed, np.take_along_axis(_by_channel(packed, table), u, axis=1))


def describe(packed: PackedLayer) -> str:
    """A short label of the storage: widths and index, e.g. "packed3-5+mask".

    >>> describe(encode(np.array([0, 0, 1, 0, 0, 0, 0, 0, 0, -1] * 8), None))
    'packed2+runs3'
    """
    widths = [s.width for s in packed.values]
    label = "packed" + ("0" if not widths else str(widths[0]) if len(widths) == 1
                        else f"{widths[0]}-{widths[-1]}")
    return label + {"dense": "", "mask": "+mask"}.get(packed.sparsity, f"+runs{packed.run_width}")
