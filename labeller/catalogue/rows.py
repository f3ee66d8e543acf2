"""Each catalogue row mapped to its record and back, once (as llm's `models.py` does).

Plain functions over sqlite-utils rows (dicts): no queries here, so the catalogue, its exchange
SQL and the TUI's list queries all read and write a table's columns the same way. The scan's
write shapes (`WindowRow`, `ExampleRow`, `NeuronRow`) live here too: they are rows before ids.
"""

from __future__ import annotations

import functools
import json
import math
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar, cast

import numpy as np

from labeller.errors import UserError
from labeller.records import (
    Example,
    ExampleKind,
    Explanation,
    Histogram,
    HistoryAction,
    HistoryEntry,
    LabelState,
    LabelStatus,
    ModelRecord,
    NeuronStats,
    NullControl,
    OutputToken,
    PredictionKind,
    RelatedNeuron,
    ScanParams,
    ScanRecord,
    ScanStatus,
    Score,
    ScoreMethod,
    ScoreWindows,
    Split,
    WeightFacts,
)

Row = dict[str, Any]
F = TypeVar("F", bound=Callable[..., Any])


class UnreadableRecord(UserError):
    """A stored value does not decode: the file was damaged below what SQLite checks."""


def reads_stored(decode: F) -> F:
    """A decoder of stored values: one that fails means damage, said as such, never a traceback
    (SQLite's page checks cannot see a corrupt JSON column or a truncated activations blob)."""

    @functools.wraps(decode)
    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            return decode(*args, **kwargs)
        except (ValueError, TypeError, KeyError) as exc:  # JSON, pydantic, numpy, missing keys
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UnreadableRecord(
                f"the catalogue holds a record that cannot be read ({decode.__name__}: "
                f"{reason[:120]}); run `labeller check`, and restore it from a backup "
                "(`labeller backup` makes one)"
            ) from None

    return cast(F, checked)


def encode_activations(values: np.ndarray) -> bytes:
    """Little-endian float32: one window's activations as the scan hands them over (the
    catalogue stores them rounded to float16: `encode_examples`)."""
    return np.asarray(values, dtype="<f4").tobytes()


# --- a neuron's examples, packed (the `neuron_examples` table, from m010) ------------------------
#
# One row per neuron: a header, the examples' records (zlib), then every example's per-token
# activations as little-endian float16, one window after another. Each example's max_activation,
# and the band edges, are kept exactly; only the per-token values are rounded (float16: relative
# error at most 2^-11, values beyond +-65504 clamp to it). On reading, no value exceeds its
# example's exact max and the value at max_index is that max exactly.
#
# Format 1 (m010): one fixed-size record (`_EXAMPLE`) per example. Format 2 (m011), about 0.6 of
# the compressed size and a third of the bytes to compress: a flags byte, the distinct band edge
# pairs (a count, then float64 low and high each), then the records a field at a time
# (`_COLUMNS`: every window id, then every kind, ...), each example naming its edges by index
# (255: none) and its max as float32 when every max is one exactly (`_EXACT32`; a scan's always
# are), else float64; and the float16 values leave out each max's own token (`_max_positions`:
# reading puts the exact max back there, as it always has).

PACK_FORMAT = 2
_HEADER = struct.Struct("<BII")  # format, number of examples, bytes of compressed records
_KINDS = ("top", "random", "quantile", "subset_top", "dla_top", "dla_bottom")
_SPLITS = ("train", "calibration", "valid", "test")
KIND_CODES = {ExampleKind(k): i for i, k in enumerate(_KINDS)}
SPLIT_CODES = {Split(k): i for i, k in enumerate(_SPLITS)}
_EXAMPLE = np.dtype(
    [
        ("window_id", "<i8"),
        ("kind", "u1"),
        ("split", "u1"),
        ("rank", "<u4"),
        ("length", "<u4"),
        ("max_index", "<i4"),
        ("band", "<i2"),  # -1: not a band window
        ("max_activation", "<f8"),
        ("band_low", "<f8"),  # NaN: none
        ("band_high", "<f8"),
    ]
)
# Format 2's fields, in stored order: name and little-endian numpy type (format 1's record's,
# up to the band, then the index of the band edges).
_RECORD_FIELDS = list(_EXAMPLE.fields or {})
_COLUMNS = (
    *((name, _EXAMPLE[name].str) for name in _RECORD_FIELDS[: _RECORD_FIELDS.index("band") + 1]),
    ("edges", "u1"),
)
_EXACT32 = 1  # flag: the maxima are stored as float32
_NO_EDGES = 255
FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class PackedExample:
    """One example as stored in its neuron's packed row (its window by id)."""

    window_id: int
    kind: ExampleKind
    rank: int
    split: Split
    activations: list[float]
    max_activation: float
    max_index: int
    band: int | None
    band_low: float | None
    band_high: float | None


def to_float16(values: np.ndarray) -> np.ndarray:
    """Per-token activations as stored: float16, out-of-range values clamped to +-65504
    (float16 already: as they are; the scan converts its own, `results._as_stored`)."""
    if values.dtype == np.float16:
        return values.astype("<f2", copy=False)
    as32 = np.asarray(values, dtype=np.float32)
    return np.clip(as32, -FLOAT16_MAX, FLOAT16_MAX).astype("<f2")


def encode_examples(examples: list[ExampleRow], window_ids: Mapping[int, int]) -> bytes:
    """One neuron's examples (`window_ids[example.window_key]` their windows' ids) as one blob
    (`encode_example_columns`)."""
    (blob,) = encode_example_columns(ExampleColumns.of_rows([examples]), WindowIds(window_ids))
    return blob


def encode_example_columns(columns: ExampleColumns, window_ids: WindowIds) -> list[bytes]:
    """Each neuron's examples as one blob: header, the zlib-compressed records (format 2), then
    the float16 activations uncompressed (compressing them saves about a fifth and costs more
    time than the whole write). Everything but the compression and the band edges is done for
    the whole block at once: a scan writes tens of millions of examples."""
    held = columns.window_key >= 0
    count = held.sum(axis=1)
    # The held slots first, in their order: each neuron's examples are then a prefix of its row.
    order = np.argsort(~held, axis=1, kind="stable")

    def first(values: np.ndarray, dtype: str) -> np.ndarray:
        return np.take_along_axis(values, order, axis=1).astype(dtype, copy=False)

    fields = {
        "window_id": window_ids.ids(first(columns.window_key, "<i8")),
        "kind": first(columns.kind, "u1"),
        "split": first(columns.split, "u1"),
        "rank": first(columns.rank, "<u4"),
        "length": first(columns.length, "<u4"),
        "max_index": first(columns.max_index, "<i4"),
        "band": first(columns.band, "<i2"),
    }
    maxima = first(columns.max_activation, "<f8")
    lows, highs = first(columns.band_low, "<f8"), first(columns.band_high, "<f8")
    narrow = maxima.astype("<f4")
    slot_held = np.arange(order.shape[1])[None, :] < count[:, None]
    exact32 = ((narrow.astype("<f8") == maxima) | ~slot_held).all(axis=1) & (count > 0)
    # The values are gathered in slot order: the held slots keep their order when moved first,
    # so a neuron's values come out in its records' order without moving the activations.
    lengths = np.where(held, columns.length.astype(np.int64), 0)
    max_index = columns.max_index.astype(np.int64)
    token = np.arange(columns.activations.shape[2])[None, None, :]
    kept = token < lengths[:, :, None]  # one pass over the block's tokens; the rest per slot
    # Each max's own token is left out: the records hold the max exactly (`_max_positions`).
    max_known = (max_index >= 0) & (max_index < lengths) & ~np.isnan(columns.max_activation)
    neuron, slot = max_known.nonzero()
    kept[neuron, slot, max_index[neuron, slot]] = False
    values = to_float16(columns.activations[kept])
    # Each neuron's kept values: its examples' tokens less their known max tokens (summing the
    # mask instead took 1.8 ms of a 1,024-neuron block's encoding)
    width = columns.activations.shape[2]
    ends = np.cumsum(np.minimum(lengths, width).sum(axis=1) - max_known.sum(axis=1))
    edges, edge_starts, edge_index = _band_edge_pairs(lows, highs, slot_held)
    raw = []
    for n, c in enumerate(count.tolist()):
        flags = _EXACT32 if exact32[n] else 0
        first_edge, last_edge = edge_starts[n], edge_starts[n + 1]
        parts = [bytes([flags, last_edge - first_edge]), edges[first_edge:last_edge].tobytes()]
        parts += [column[n, :c].tobytes() for column in fields.values()]
        parts += [edge_index[n, :c].tobytes(), (narrow if flags else maxima)[n, :c].tobytes()]
        raw.append(b"".join(parts))
    blobs = []
    for n, (c, records) in enumerate(zip(count.tolist(), _compressed(raw), strict=True)):
        start = ends[n - 1] if n else 0
        header = _HEADER.pack(PACK_FORMAT, c, len(records))
        blobs.append(b"".join((header, records, values[start : ends[n]].data)))
    return blobs


def _compressed(records: list[bytes]) -> list[bytes]:
    """zlib level 1 of each, half of them on another thread: zlib lets go of the GIL while it
    compresses. Still worth it with the encoding on a thread of its own (`catalogue._encoded`):
    the write benchmark's 36,864 neurons took 3.9-4.1 s with it, 4.2-4.4 s without."""
    half = len(records) // 2

    def compress(part: list[bytes]) -> list[bytes]:
        return [zlib.compress(record, 1) for record in part]

    if half < 64:
        return compress(records)
    with ThreadPoolExecutor(1) as pool:
        later = pool.submit(compress, records[half:])
        return compress(records[:half]) + later.result()


def _band_edge_pairs(
    lows: np.ndarray, highs: np.ndarray, held: np.ndarray
) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Per neuron (row) the distinct (low, high) band edge pairs of its held examples in order
    of first use, and each example's index into them (`_NO_EDGES`: none), for a whole block
    by one sort. Returns the pairs of every neuron one after another [pairs, 2], where each
    neuron's begin (`starts[n]:starts[n + 1]`), and the indices [neurons, slots]. Pairs are
    equal as floats are (0.0 and -0.0 alike, the first one used kept; a NaN high never equal)."""
    neurons, slots = lows.shape
    index = np.full((neurons, slots), _NO_EDGES, dtype="u1")
    neuron, slot = np.nonzero(held & ~np.isnan(lows))
    low, high = lows[neuron, slot], highs[neuron, slot]
    order = np.lexsort((slot, high, low, neuron))  # a pair's uses together, the first first
    neuron, slot, low, high = neuron[order], slot[order], low[order], high[order]
    new = np.ones(neuron.size, dtype=bool)
    new[1:] = (neuron[1:] != neuron[:-1]) | (low[1:] != low[:-1]) | (high[1:] != high[:-1])
    pair = np.cumsum(new) - 1  # each use's pair, pairs sorted by value
    first_use = np.flatnonzero(new)
    by_use = np.lexsort((slot[first_use], neuron[first_use]))  # pairs in order of first use
    per_neuron = np.bincount(neuron[first_use], minlength=neurons)
    starts = np.concatenate([[0], np.cumsum(per_neuron)])
    if per_neuron.size and per_neuron.max() >= _NO_EDGES:
        raise ValueError(
            f"{per_neuron.max()} activation bands in one neuron; at most 254 are stored"
        )
    rank = np.empty(first_use.size, dtype=np.int64)
    rank[by_use] = np.arange(first_use.size) - starts[neuron[first_use][by_use]]
    index[neuron, slot] = rank[pair]
    taken = first_use[by_use]
    edges = np.stack([low[taken], high[taken]], axis=1).astype("<f8")
    return edges, starts.tolist(), index


def _max_positions(
    lengths: np.ndarray, max_index: np.ndarray, maxima: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Where each example's max token is among all the examples' values one after another, for
    the examples whose max is known (and which): format 2 leaves those values out, since the
    records hold each max exactly and reading puts it back there."""
    held = (max_index >= 0) & (max_index < lengths) & ~np.isnan(maxima)
    return (np.cumsum(lengths) - lengths + max_index)[held], held


def _records(version: int, count: int, raw: bytes) -> np.ndarray:
    """The stored records as one `_EXAMPLE` array, whichever format holds them."""
    if version == 1:
        return np.frombuffer(raw, dtype=_EXAMPLE, count=count)
    if version != 2:
        raise ValueError(f"unknown examples format {version}")
    if len(raw) < 2:
        raise ValueError("records without their flags")
    flags, n_edges = raw[0], raw[1]
    at = 2 + 16 * n_edges
    edges = np.frombuffer(raw, dtype="<f8", count=2 * n_edges, offset=2).reshape(-1, 2)
    edges = np.concatenate([edges, np.full((1, 2), math.nan)])  # index -1: none
    meta = np.zeros(count, dtype=_EXAMPLE)
    columns = {}
    for name, dtype in _COLUMNS:
        columns[name] = np.frombuffer(raw, dtype=dtype, count=count, offset=at)
        at += count * np.dtype(dtype).itemsize
        if name != "edges":
            meta[name] = columns[name]
    top = "<f4" if flags & _EXACT32 else "<f8"
    meta["max_activation"] = np.frombuffer(raw, dtype=top, count=count, offset=at)
    at += count * np.dtype(top).itemsize
    if at != len(raw):
        raise ValueError("records of the wrong size")
    index = columns["edges"].astype(np.int64)
    index[index == _NO_EDGES] = -1
    if index.size and index.max() >= n_edges:
        raise ValueError("an example names band edges that are not stored")
    meta["band_low"], meta["band_high"] = edges[index, 0], edges[index, 1]
    return meta


@reads_stored
def decode_examples(blob: bytes) -> list[PackedExample]:
    """A neuron's examples, in stored order (as `encode_examples` was given them)."""
    version, count, size = _HEADER.unpack_from(blob)
    start = _HEADER.size
    try:
        records = zlib.decompress(blob[start : start + size])
    except zlib.error as exc:
        raise ValueError(str(exc)) from None
    meta = _records(version, count, records)
    values64 = np.frombuffer(blob, dtype="<f2", offset=start + size).astype(float)
    lengths = meta["length"].astype(np.int64)
    positions, held = np.zeros(0, dtype=np.int64), np.zeros(count, dtype=bool)
    if version == 2:
        positions, held = _max_positions(
            lengths, meta["max_index"].astype(np.int64), meta["max_activation"]
        )
    if values64.size + positions.size != int(lengths.sum()):
        raise ValueError("truncated activations")
    values64 = np.insert(
        values64, positions - np.arange(positions.size), meta["max_activation"][held]
    )
    found, at = [], 0
    for m in meta.tolist():
        window_id, kind, split, rank, length, max_index, band, top, low, high = m
        window = values64[at : at + length]
        if not math.isnan(top):
            # float16 rounding can lift a value just above the exact max: clamp to it, and give
            # the max's own token its exact value, so activations[max_index] is the window's
            # max and equals max_activation, as before m010. (A dla_bottom window's "max" is
            # its lowest DLA: clamped from below.)
            clamp = np.maximum if _KINDS[kind] == ExampleKind.DLA_BOTTOM else np.minimum
            clamp(window, top, out=window)
            if 0 <= max_index < length:
                window[max_index] = top
        found.append(
            PackedExample(
                window_id=window_id,
                kind=ExampleKind(_KINDS[kind]),
                rank=rank,
                split=Split(_SPLITS[split]),
                activations=window.tolist(),
                max_activation=top,
                max_index=max_index,
                band=None if band < 0 else band,
                band_low=None if math.isnan(low) else low,
                band_high=None if math.isnan(high) else high,
            )
        )
        at += length
    return found


def example_order(example: PackedExample) -> tuple[int, int]:
    """Top, random, then band windows, each by rank (as the catalogue has always listed them)."""
    return (_KINDS.index(example.kind.value), example.rank)


@reads_stored
def example_from_packed(example: PackedExample, window: Row) -> Example:
    """A packed example with its window (`Catalogue.packed_examples`: tokens, document,
    offset)."""
    return Example(
        kind=example.kind,
        rank=example.rank,
        split=example.split,
        tokens=window["tokens"],
        activations=example.activations,
        max_index=example.max_index,
        max_activation=example.max_activation,
        document=window["document"],
        offset=window["offset"],
        subset=window["subset"],
        band=example.band,
        band_low=example.band_low,
        band_high=example.band_high,
    )


def examples_of_rows(legacy: list[Row]) -> list[ExampleRow]:
    """Old `examples` rows (float32 blobs, m001-m009) as the rows `encode_examples` packs, their
    window keys being their window ids: what m010 converts."""
    return [
        ExampleRow(
            window_key=row["window_id"],
            kind=ExampleKind(row["kind"]),
            rank=row["rank"],
            split=Split(row["split"]),
            activations=row["activations"] or b"",
            max_activation=row["max_activation"],
            max_index=row["max_index"],
            band=row["band"],
            band_low=row["band_low"],
            band_high=row["band_high"],
        )
        for row in legacy
    ]


def params_key(params: ScanParams) -> str:
    """What a resumed or imported scan is matched on: its parameters, serialised one way."""
    return params.model_dump_json()


@dataclass(frozen=True)
class WindowRow:
    """A stored text window, written once and shared by every neuron that keeps it."""

    key: int
    document: str
    offset: int
    token_ids: list[int]
    # None: the model's own string for each id (a scan's window), given to `insert_windows` for
    # all the windows at once instead of a list per window
    tokens: list[str] | None
    subset: str | None = None  # the corpus subset of its document, if the corpus has subsets


class ExampleRow(NamedTuple):
    """One example before ids. A tuple, not a dataclass: a scan makes tens of millions of
    them, and `encode_examples` reads them column by column."""

    window_key: int
    kind: ExampleKind
    rank: int
    split: Split
    activations: bytes
    max_activation: float
    max_index: int
    band: int | None = None
    band_low: float | None = None
    band_high: float | None = None


@dataclass(frozen=True)
class ExampleColumns:
    """The examples of a block of neurons as arrays: one row per neuron, one column per slot (a
    slot whose window_key is -1 holds none), held slots in stored order. How the scan hands a
    layer's examples over, so that packing them is array work (`encode_example_columns`)."""

    window_key: np.ndarray  # [neurons, slots] int64; -1: an empty slot
    kind: np.ndarray  # `KIND_CODES`
    rank: np.ndarray
    split: np.ndarray  # `SPLIT_CODES`
    max_activation: np.ndarray  # float64
    max_index: np.ndarray
    band: np.ndarray  # -1: not a band window
    band_low: np.ndarray  # float64; NaN: none
    band_high: np.ndarray  # float64; NaN: none
    length: np.ndarray  # the window's tokens
    activations: np.ndarray  # [neurons, slots, ctx] float32 or float16; past `length` unused

    @classmethod
    def of_rows(cls, neurons: list[list[ExampleRow]]) -> ExampleColumns:
        """Each neuron's examples, as rows."""
        slots = max(map(len, neurons), default=0)
        lengths = [[len(e.activations) // 4 for e in examples] for examples in neurons]
        ctx = max((max(sizes, default=0) for sizes in lengths), default=0)
        acts = np.zeros((len(neurons), slots, ctx), dtype=np.float32)
        for n, examples in enumerate(neurons):
            for slot, (example, length) in enumerate(zip(examples, lengths[n], strict=True)):
                acts[n, slot, :length] = np.frombuffer(example.activations, dtype="<f4")

        def column(field: Callable[[ExampleRow], Any], empty: Any, dtype: Any) -> np.ndarray:
            values = np.full((len(neurons), slots), empty, dtype=dtype)
            for n, examples in enumerate(neurons):
                values[n, : len(examples)] = [field(e) for e in examples]
            return values

        return cls(
            window_key=column(lambda e: e.window_key, -1, np.int64),
            kind=column(lambda e: KIND_CODES[e.kind], 0, np.uint8),
            rank=column(lambda e: e.rank, 0, np.int64),
            split=column(lambda e: SPLIT_CODES[e.split], 0, np.uint8),
            max_activation=column(lambda e: e.max_activation, math.nan, np.float64),
            max_index=column(lambda e: e.max_index, 0, np.int64),
            band=column(lambda e: -1 if e.band is None else e.band, -1, np.int64),
            band_low=column(lambda e: _or_nan(e.band_low), math.nan, np.float64),
            band_high=column(lambda e: _or_nan(e.band_high), math.nan, np.float64),
            length=column(lambda e: len(e.activations) // 4, 0, np.int64),
            activations=acts,
        )


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


class WindowIds:
    """Window key -> stored id, looked up for whole arrays of keys at once. A scan's keys are
    its windows' stream indices, dense from 0: those are looked up in a table (a block of
    1,024 neurons' keys in 0.3 ms, against 3.9 ms by binary search); other keys by search."""

    def __init__(self, ids: Mapping[int, int]) -> None:
        keys = np.fromiter(ids.keys(), dtype=np.int64, count=len(ids))
        values = np.fromiter(ids.values(), dtype=np.int64, count=len(ids))
        order = np.argsort(keys)
        self.keys, self.values = keys[order], values[order]
        self.table: np.ndarray | None = None
        if keys.size and keys.min() >= 0 and values.min() >= 0:
            span = int(keys.max()) + 1
            if span <= 4 * keys.size + 65_536:
                self.table = np.full(span, -1, dtype=np.int64)
                self.table[keys] = values

    def ids(self, keys: np.ndarray) -> np.ndarray:
        """The ids of these keys (-1, an empty slot, gives 0); KeyError for a key not stored."""
        if self.table is not None:
            inside = (keys >= 0) & (keys < self.table.size)
            found = np.where(inside, self.table[np.where(inside, keys, 0)], -1)
            missing = (keys >= 0) & (found < 0)
            if missing.any():
                raise KeyError(int(keys[missing][0]))
            return np.where(keys >= 0, found, 0)
        at = np.minimum(np.searchsorted(self.keys, keys), max(self.keys.size - 1, 0))
        found = (self.keys[at] == keys) if self.keys.size else np.zeros(keys.shape, dtype=bool)
        missing = ~found & (keys >= 0)
        if missing.any():
            raise KeyError(int(keys[missing][0]))
        return np.where(found, self.values[at] if self.keys.size else 0, 0)


@dataclass(frozen=True)
class NeuronFacts:
    """What a neuron's `neurons` row holds: statistics, weight facts, related neurons."""

    layer: int
    neuron: int
    stats: NeuronStats
    weights: WeightFacts | None
    related: list[RelatedNeuron] | None = None  # from a scan with --correlations


@dataclass(frozen=True)
class NeuronRow:
    """One neuron with its examples as rows (an import, a test)."""

    layer: int
    neuron: int
    stats: NeuronStats
    weights: WeightFacts | None
    examples: list[ExampleRow]
    related: list[RelatedNeuron] | None = None


@dataclass(frozen=True)
class NeuronBlock:
    """Neurons, by (layer, neuron), with their rows' facts as stored (`FACT_COLUMNS`' values)
    and their examples as columns, one row per neuron: how the scan hands over a layer, a block
    at a time, built from arrays without a record per neuron."""

    keys: list[tuple[int, int]]
    facts: list[tuple[Any, ...]]
    examples: ExampleColumns

    @classmethod
    def of_rows(cls, neurons: list[NeuronRow]) -> NeuronBlock:
        facts = [
            neuron_facts(NeuronFacts(n.layer, n.neuron, n.stats, n.weights, n.related))
            for n in neurons
        ]
        keys = [(n.layer, n.neuron) for n in neurons]
        return cls(keys, facts, ExampleColumns.of_rows([n.examples for n in neurons]))


# --- models and scans ---------------------------------------------------------------------------


@reads_stored
def model_from_row(row: Row) -> ModelRecord:
    return ModelRecord(**{k: v for k, v in row.items() if k != "id"})


def model_to_row(model: ModelRecord) -> Row:
    return model.model_dump()


@reads_stored
def scan_from_row(row: Row) -> ScanRecord:
    """A scans row with its model's name as `model` (queries join `models` for it)."""
    return ScanRecord(
        id=row["id"],
        model=row["model"],
        params=params_from_json(row["params"]),
        status=ScanStatus(row["status"]),
        tokens_seen=row["tokens_seen"],
        windows_seen=row["windows_seen"],
        started_at=row["started_at"],
        updated_at=row["updated_at"],
    )


def params_from_json(raw: str) -> ScanParams:
    """Stored scan parameters; a scan recorded before activation bands existed kept none."""
    data = json.loads(raw)
    data.setdefault("band_windows", 0)
    return ScanParams.model_validate(data)


def scan_to_row(
    model_id: int,
    params: ScanParams,
    status: ScanStatus,
    *,
    tokens_seen: int,
    windows_seen: int,
    started_at: str,
    updated_at: str,
) -> Row:
    """A new scans row (a fresh scan, or one imported from an export); SQLite gives its id."""
    return {
        "model_id": model_id,
        "params": params.model_dump_json(),
        "params_key": params_key(params),
        "status": status.value,
        "tokens_seen": tokens_seen,
        "windows_seen": windows_seen,
        "started_at": started_at,
        "updated_at": updated_at,
    }


# --- neurons, windows and examples --------------------------------------------------------------


# SQLite stores a float NaN as NULL, which already means "undefined" for skewness and kurtosis:
# NaN statistics are stored as the text 'NaN' and read back as float('nan').
NAN_TEXT = "NaN"


def real_to_db(value: float | None) -> float | str | None:
    return NAN_TEXT if value is not None and math.isnan(value) else value


def real_from_db(value: float | str | None) -> float | None:
    """A nullable REAL column that may hold 'NaN' (`float()` reads it in a required one)."""
    return float(value) if value is not None else None


@reads_stored
def related_from_row(row: Row) -> list[RelatedNeuron] | None:
    """The neuron's related neurons as scanned (labels not yet filled in); None if not scanned."""
    stored = row.get("related_neurons")
    if stored is None:
        return None
    return [RelatedNeuron.model_validate(r) for r in json.loads(stored)]


@reads_stored
def stats_from_row(row: Row) -> NeuronStats:
    return NeuronStats(
        max=float(row["max"]),
        min=float(row["min"]),
        mean=float(row["mean"]),
        std=float(row["std"]),
        density=float(row["density"]),
        skewness=real_from_db(row["skewness"]),
        kurtosis=real_from_db(row["kurtosis"]),
        tokens=row["tokens"],
        histogram=Histogram.model_validate_json(row["histogram"]),
    )


@reads_stored
def weights_from_row(row: Row) -> WeightFacts | None:
    if row["w_in_w_out_cosine"] is None:
        return None
    return WeightFacts(
        w_in_w_out_cosine=row["w_in_w_out_cosine"],
        top_positive_tokens=output_tokens_from_db(row["top_positive_tokens"]),
        top_negative_tokens=output_tokens_from_db(row["top_negative_tokens"]),
    )


def output_tokens_from_db(raw: str) -> list[OutputToken]:
    """A neuron's top output tokens: a JSON list of [token, weight] pairs (of objects with
    `token` and `weight` before m011, which converts them)."""
    return [
        OutputToken(**t) if isinstance(t, dict) else OutputToken(token=t[0], weight=t[1])
        for t in json.loads(raw)
    ]


def output_tokens_to_db(tokens: Iterable[tuple[str, float]]) -> str:
    """[token, weight] pairs: the keys of each object were a quarter of a neuron's row. The
    JSON json.dumps would write (ensure_ascii off), each token's string encoded once: a scan
    writes 20 per neuron from a vocabulary's few thousand."""
    return "[" + ", ".join(f"[{_json_string(t)}, {_json_float(w)}]" for t, w in tokens) + "]"


def output_token_columns_to_db(tokens: list[str], weights: np.ndarray) -> list[str]:
    """`output_tokens_to_db` for a layer's neurons at once: `tokens` flat, neuron by neuron,
    `weights` float32 [neurons, k], each weight written as its shortest decimal (numpy's,
    which reads back as the same float32; large ones in exponent form). One formatting per
    neuron, not a string per token: a scan writes 20 of them for every neuron."""
    neurons, k = weights.shape
    if k == 0:
        return ["[]"] * neurons
    numbers = np.asarray(weights, dtype=np.float32).ravel()
    texts = numbers.astype(str).tolist()
    for at in np.flatnonzero(~np.isfinite(numbers)).tolist():
        texts[at] = _json_float(float(numbers[at]))
    cells: list[str] = [""] * (2 * neurons * k)
    cells[0::2] = [_json_string(token) for token in tokens]
    cells[1::2] = texts
    template = "[" + ", ".join(["[%s, %s]"] * k) + "]"
    step = 2 * k
    return [template % tuple(cells[at : at + step]) for at in range(0, len(cells), step)]


@functools.lru_cache(maxsize=1 << 17)
def _json_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _json_float(value: float) -> str:
    return float.__repr__(value) if math.isfinite(value) else json.dumps(value)


def histogram_to_db(low: float, high: float, counts: list[int]) -> str:
    """A `Histogram` as its JSON (NaN and infinities as JavaScript's constants, which
    `Histogram.model_validate_json` reads)."""
    # json.dumps's text, built directly: a scan writes one per neuron
    low_text, high_text = _json_float(float(low)), _json_float(float(high))
    counts_text = ",".join(map(str, counts))
    return f'{{"low":{low_text},"high":{high_text},"counts":[{counts_text}]}}'


def related_to_db(related: list[RelatedNeuron]) -> str:
    return json.dumps([r.model_dump(exclude={"label"}) for r in related])


def reals_to_db(values: list[float]) -> list[float | str]:
    """`real_to_db` for a column."""
    return [NAN_TEXT if v != v else v for v in values]


def neuron_to_row(neuron: NeuronFacts, model_id: int, scan_id: int | None) -> Row:
    """The neurons row: statistics and weight facts (the examples go in their own table); the
    related neurons only when scanned (the column is m015's; absent reads as null)."""
    stats, weights = neuron.stats, neuron.weights
    row = {
        "model_id": model_id,
        "layer": neuron.layer,
        "neuron": neuron.neuron,
        "scan_id": scan_id,
        "max": real_to_db(stats.max),
        "min": real_to_db(stats.min),
        "mean": real_to_db(stats.mean),
        "std": real_to_db(stats.std),
        "density": real_to_db(stats.density),
        "skewness": real_to_db(stats.skewness),
        "kurtosis": real_to_db(stats.kurtosis),
        "tokens": stats.tokens,
        "histogram": histogram_to_db(
            stats.histogram.low, stats.histogram.high, stats.histogram.counts
        ),
        "w_in_w_out_cosine": weights.w_in_w_out_cosine if weights else None,
        "top_positive_tokens": output_tokens_to_db(
            (t.token, t.weight) for t in weights.top_positive_tokens
        )
        if weights
        else None,
        "top_negative_tokens": output_tokens_to_db(
            (t.token, t.weight) for t in weights.top_negative_tokens
        )
        if weights
        else None,
    }
    if neuron.related is not None:
        row["related_neurons"] = related_to_db(neuron.related)
    return row


NEURON_COLUMNS = (
    "model_id",
    "layer",
    "neuron",
    "scan_id",
    "max",
    "min",
    "mean",
    "std",
    "density",
    "skewness",
    "kurtosis",
    "tokens",
    "histogram",
    "w_in_w_out_cosine",
    "top_positive_tokens",
    "top_negative_tokens",
    "related_neurons",
)
FACT_COLUMNS = NEURON_COLUMNS[4:]  # what a neuron's row says of it: all but its keys


def neuron_facts(neuron: NeuronFacts) -> tuple[Any, ...]:
    """`neuron_to_row`'s values in FACT_COLUMNS order."""
    row = neuron_to_row(neuron, 0, None)
    return tuple(row.get(column) for column in FACT_COLUMNS)


def token_ids_to_db(token_ids: list[int]) -> bytes:
    """A window's token ids as m010 stored them: little-endian uint32 (what m011 converts)."""
    return np.asarray(token_ids, dtype="<u4").tobytes()


@reads_stored
def token_ids_from_db(value: bytes | str | None) -> list[int]:
    """A window's `token_ids` as m010 left them: uint32 blob, JSON text (before m010), or NULL
    (none known); m010 and m011 read them."""
    if value is None:
        return []
    if isinstance(value, str):
        return [int(i) for i in json.loads(value)]
    return np.frombuffer(value, dtype="<u4").astype(int).tolist()


# --- a window's token ids and strings (from m011) ---------------------------------------------
#
# Token ids: one byte giving the width (2: uint16, when every id fits; else 4: uint32), then the
# ids little-endian. Token strings: NULL when the model's `vocabulary` gives every token's
# string (always, for a scan: a token's string is a function of its id), else the JSON list.

_ID_WIDTHS = {2: "<u2", 4: "<u4"}


def pack_token_ids(token_ids: list[int]) -> bytes:
    """A window's token ids as stored (uint16 when they fit)."""
    ids = np.asarray(token_ids, dtype=np.int64)
    width = 2 if ids.size == 0 or int(ids.max()) < 2**16 else 4
    return bytes([width]) + ids.astype(_ID_WIDTHS[width]).tobytes()


@reads_stored
def unpack_token_ids(blob: bytes | None) -> list[int]:
    """A window's stored token ids (NULL: none known)."""
    if blob is None:
        return []
    if not blob:
        raise ValueError("token ids without their width")
    width = _ID_WIDTHS[blob[0]]  # KeyError: damaged
    return np.frombuffer(blob, dtype=width, offset=1).astype(int).tolist()


@dataclass
class Vocabulary:
    """One model's token strings by id, as far as the catalogue knows them (`vocabulary`):
    what lets a window store its token ids alone. `added`: strings learnt since it was read,
    for the writer to insert."""

    texts: dict[int, str]
    added: dict[int, str] = field(default_factory=dict)

    def learn(self, token_texts: Mapping[int, str]) -> set[int]:
        """Take the model's strings for these ids (`added` where they were unknown); returns
        the ids whose stored string differs: a window holding one keeps its own strings."""
        texts = self.texts
        differing = set()
        for token_id, text in token_texts.items():
            known = texts.get(token_id)
            if known is None:
                texts[token_id] = self.added[token_id] = text
            elif known != text:
                differing.add(token_id)
        return differing

    def tokens_to_db(self, token_ids: list[int], tokens: list[str]) -> str | None:
        """A window's `tokens` column: NULL when the vocabulary gives every string (learning
        the ids it lacks), else the JSON list (a string that differs from the model's, or
        strings without ids), so what is read back is always what was written. A loop over
        the window's distinct ids, then one comparison: a big scan writes millions of tokens."""
        if len(token_ids) == len(tokens):
            texts = self.texts
            pairs = dict(zip(token_ids, tokens, strict=True))
            for token_id, text in pairs.items():
                if token_id not in texts:
                    texts[token_id] = self.added[token_id] = text
            if list(map(texts.__getitem__, token_ids)) == tokens:
                return None
        return json.dumps(tokens, ensure_ascii=False)

    @reads_stored
    def tokens_from_db(self, token_ids: list[int], stored: str | None) -> list[str]:
        """A window's token strings: its own (JSON), else the vocabulary's for its ids."""
        if stored is not None:
            return [str(t) for t in json.loads(stored)]
        texts = self.texts
        return [texts[i] for i in token_ids]  # KeyError: damaged


WINDOW_COLUMNS = ("scan_id", "document", "offset", "token_ids", "tokens", "subset")


def window_values(
    window: WindowRow,
    scan_id: int | None,
    vocabulary: Vocabulary,
    token_texts: Mapping[int, str],
    differing: set[int],
) -> tuple[Any, ...]:
    """A windows row's values in WINDOW_COLUMNS order (`vocabulary`: the model's). A window of
    no scan (imported without one) keeps its strings: only a scan ties a window to its model.
    A window without strings of its own has the model's (`token_texts`): NULL, unless one of
    its ids is `differing` (stored with another string)."""
    if window.tokens is None:
        if scan_id is None or not differing.isdisjoint(window.token_ids):
            tokens = json.dumps([token_texts[i] for i in window.token_ids], ensure_ascii=False)
        else:
            tokens = None
    elif scan_id is None:
        tokens = json.dumps(window.tokens, ensure_ascii=False)
    else:
        tokens = vocabulary.tokens_to_db(window.token_ids, window.tokens)
    return (
        scan_id,
        window.document,
        window.offset,
        pack_token_ids(window.token_ids),
        tokens,
        window.subset,
    )


def example_rows(example: Example, token_ids: list[int], key: int) -> tuple[WindowRow, ExampleRow]:
    """An example read back (or from an export) as the window and examples rows it came from."""
    window = WindowRow(
        key=key,
        document=example.document,
        offset=example.offset,
        token_ids=token_ids,
        tokens=example.tokens,
        subset=example.subset,
    )
    row = ExampleRow(
        window_key=key,
        kind=example.kind,
        rank=example.rank,
        split=example.split,
        activations=encode_activations(np.asarray(example.activations)),
        max_activation=example.max_activation,
        max_index=example.max_index,
        band=example.band,
        band_low=example.band_low,
        band_high=example.band_high,
    )
    return window, row


# --- explanations and scores --------------------------------------------------------------------


@reads_stored
def explanation_from_row(row: Row, scores: list[Score]) -> Explanation:
    return Explanation(
        id=row["id"],
        text=row["text"],
        source=row["source"],
        status=LabelStatus(row["status"]),
        prompt_version=row["prompt_version"],
        producer_model=row["producer_model"],
        annotator=row["annotator"],
        # A rejected or withdrawn label is never best, whatever a scoring run once marked.
        best=bool(row["best"])
        and row["status"] not in (LabelStatus.REJECTED.value, LabelStatus.WITHDRAWN.value),
        chosen_on=None if row["chosen_on"] is None else Split(row["chosen_on"]),
        reported_on=None if row["reported_on"] is None else Split(row["reported_on"]),
        seen=None if row["seen"] is None else [Split(s) for s in json.loads(row["seen"])],
        created_at=row["created_at"],
        scores=scores,
    )


def explanation_to_row(
    explanation: Explanation, neuron_id: int, scan_id: int | None, updated_at: str | None
) -> Row:
    """A new explanations row (its scores go in their own table)."""
    return {
        "neuron_id": neuron_id,
        "text": explanation.text,
        "source": explanation.source,
        "status": explanation.status.value,
        "prompt_version": explanation.prompt_version,
        "producer_model": explanation.producer_model,
        "annotator": explanation.annotator,
        "scan_id": scan_id,
        "created_at": explanation.created_at,
        "updated_at": updated_at,
        "best": int(explanation.best),
        "chosen_on": None if explanation.chosen_on is None else explanation.chosen_on.value,
        "reported_on": None if explanation.reported_on is None else explanation.reported_on.value,
        "seen": None
        if explanation.seen is None
        else json.dumps([s.value for s in explanation.seen]),
    }


def seen_to_json(seen: list[Split] | None) -> str | None:
    """An explanation's `seen` column: the splits as a JSON list, NULL when unknown."""
    return None if seen is None else json.dumps([s.value for s in seen])


@reads_stored
def label_state_from_row(row: Row) -> LabelState:
    """An explanations row as the label state a history entry records."""
    return LabelState(
        explanation_id=row["id"],
        text=row["text"],
        status=LabelStatus(row["status"]),
        source=row["source"],
    )


@reads_stored
def score_from_row(row: Row) -> Score:
    return Score(
        method=ScoreMethod(row["method"]),
        split=Split(row["split"]),
        score=row["score"],
        simulator=row["simulator"],
        prompt_version=row["prompt_version"],
        prediction=None if row["prediction"] is None else PredictionKind(row["prediction"]),
        blind=bool(row["blind"]),
        windows=ScoreWindows(row["windows"] or ScoreWindows.TOP_AND_RANDOM),
        subset=row["subset"],
        details=json.loads(row["details"] or "{}"),
        created_at=row["created_at"],
    )


def score_to_row(score: Score, explanation_id: int) -> Row:
    return {
        "explanation_id": explanation_id,
        "method": score.method.value,
        "split": score.split.value,
        "score": score.score,
        "simulator": score.simulator,
        "prompt_version": score.prompt_version,
        "prediction": None if score.prediction is None else score.prediction.value,
        "blind": int(score.blind),
        "windows": score.windows.value,
        "subset": score.subset,
        "details": json.dumps(score.details, ensure_ascii=False),
        "created_at": score.created_at,
    }


@reads_stored
def null_control_from_row(row: Row) -> NullControl:
    """`row` joined with its model's name as `model`."""
    return NullControl(
        model=row["model"],
        simulator=row["simulator"],
        prompt_version=row["prompt_version"] or "",
        split=Split(row["split"]),
        prediction=PredictionKind(row["prediction"]),
        windows=ScoreWindows(row["windows"] or ScoreWindows.TOP_AND_RANDOM),
        values=json.loads(row["r_values"]),
        excluded=row["excluded"] or 0,
        mean=row["mean"],
        std=row["std"],
        p95=row["p95"],
        created_at=row["created_at"],
    )


def null_control_to_row(null: NullControl, model_id: int) -> Row:
    return {
        "model_id": model_id,
        "simulator": null.simulator,
        "prompt_version": null.prompt_version,
        "split": null.split.value,
        "prediction": null.prediction.value,
        "windows": null.windows.value,
        "n": null.n,
        "excluded": null.excluded,
        "mean": null.mean,
        "std": null.std,
        "p95": null.p95,
        "r_values": json.dumps(null.values),
        "created_at": null.created_at,
    }


# --- label history ------------------------------------------------------------------------------
# `before` and `after` are LabelState JSON; an undo's `after` also names the entry it undid.


@reads_stored
def history_from_row(row: Row) -> HistoryEntry:
    """A label_history row with its neuron's `layer` and `neuron` (queries join `neurons`)."""
    return HistoryEntry(
        id=row["id"],
        layer=row["layer"],
        neuron=row["neuron"],
        explanation_id=row["explanation_id"],
        action=HistoryAction(row["action"]),
        before=label_state_from_json(row["before"]),
        after=label_state_from_json(row["after"]),
        annotator=row["annotator"],
        at=row["at"],
        edited_from=row["edited_from"],
    )


@reads_stored
def undone_id(row: Row) -> int | None:
    """The id of the entry an undo entry reverted; None for every other entry."""
    if not row["after"]:
        return None
    value = json.loads(row["after"]).get("undoes")
    return int(value) if value is not None else None


def history_to_row(
    neuron_id: int,
    explanation_id: int | None,
    action: HistoryAction,
    before: LabelState | None,
    after: LabelState | None,
    *,
    annotator: str | None,
    at: str,
    undoes: int | None = None,
    edited_from: int | None = None,
) -> Row:
    after_json = after.model_dump_json() if after else None
    if after is not None and undoes is not None:
        after_json = json.dumps({**after.model_dump(mode="json"), "undoes": undoes})
    return {
        "neuron_id": neuron_id,
        "explanation_id": explanation_id,
        "action": action.value,
        "before": before.model_dump_json() if before else None,
        "after": after_json,
        "annotator": annotator,
        "at": at,
        "edited_from": edited_from,
    }


@reads_stored
def label_state_from_json(raw: str | None) -> LabelState | None:
    """A history entry's `before` or `after` column."""
    if not raw:
        return None
    data = json.loads(raw)
    data.pop("undoes", None)
    return LabelState(**data)
