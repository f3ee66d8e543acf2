"""One compiled CPU pass per layer and batch for everything the scan keeps, with numba.

As separate torch ops the scan's updates (min, max, window max, four power sums, positives,
histogram bins and counts, top-k and band-sample merges) read every activation about a dozen
times and cost a quarter of a one-thread forward pass. Here each core takes a block of neurons
and, while the block's activations are in its cache, finds the extremes, grows the histograms
to cover them, takes the power sums and bins, then merges the block's top windows and band
samples neuron by neuron (after the first batches mostly a comparison). Exactness is kept:
maxima are the float32 values themselves, bins are computed as the torch path computes them
(a power-of-two scale, exact in float32), power sums are taken per window in float32 and summed
in float64, and top-k and band samples follow the torch path's rules exactly (tested equal).

The first call compiles the kernels (about 20 s on a 2-core machine); numba caches them on disk.
"""

from __future__ import annotations

import functools
import math
import os

import numba
import numpy as np
import torch
from numba import njit, prange

from labeller.scan.accumulators import (
    EMPTY_PRIORITY,
    AdaptiveHistogram,
    BandSample,
    Moments,
    TopWindows,
)

BLOCK = 128  # neurons per task: a block's rows of 64 tokens fit in L1, its histogram in L2
_FLAGS = {"reassoc", "contract", "nsz", "arcp"}  # not nnan/ninf: -inf and NaN stay meaningful
# Cached on disk, without the GIL (other Python threads run meanwhile), no bounds checks; the
# helpers inlined into the two parallel kernels that call them.
_helper = njit(cache=True, nogil=True, boundscheck=False, inline="always")
_pass = njit(
    cache=True, nogil=True, boundscheck=False, inline="always", fastmath=_FLAGS, error_model="numpy"
)
_parallel = njit(cache=True, nogil=True, boundscheck=False, parallel=True)


@_pass
def _block_extremes(  # pragma: no cover - compiled
    x: np.ndarray,
    skip: int,
    lengths: np.ndarray,
    lo: int,
    hi: int,
    window_max: np.ndarray,
    batch_min: np.ndarray,
    batch_max: np.ndarray,
) -> None:
    """Each window's max over its real tokens, and the batch's min and max, for neurons lo:hi."""
    width = hi - lo
    low = np.full(width, np.inf, np.float32)
    high = np.full(width, -np.inf, np.float32)
    top = np.empty(width, np.float32)
    for b in range(x.shape[0]):
        top[:] = -np.inf
        for t in range(skip, skip + lengths[b]):
            row = x[b, t, lo:hi]
            for j in range(width):
                top[j] = max(top[j], row[j])
                low[j] = min(low[j], row[j])
        for j in range(width):
            window_max[b, lo + j] = top[j]
            high[j] = max(high[j], top[j])
    batch_min[lo:hi] = low
    batch_max[lo:hi] = high


@_helper
def _cover(  # pragma: no cover - compiled
    neuron: int,
    low: float,
    high: float,
    counts: np.ndarray,
    inverse_width: np.ndarray,
    first: np.ndarray,
) -> None:
    """AdaptiveHistogram.cover for one neuron: double the bin width until the bins take
    [low, high], anchoring old counts low when growing up and high when growing down."""
    bins = counts.shape[1]
    merged = np.empty(bins, np.int64)
    while True:
        scale = inverse_width[neuron]
        below = math.floor(np.float32(low) * scale) < first[neuron]
        above = math.floor(np.float32(high) * scale) >= first[neuron] + bins
        if not (below or above):
            return
        aligned = first[neuron] // 2  # in units of the new width
        shift = first[neuron] - 2 * aligned  # 0 or 1: where old bin 0 sits in its new bin
        lift = bins // 2 - 1 if below else 0
        merged[:] = 0
        for i in range(bins):
            merged[(i + shift) // 2 + lift] += counts[neuron, i]
        counts[neuron, :] = merged
        inverse_width[neuron] = scale / np.float32(2.0)
        first[neuron] = aligned - lift


@_pass
def _block_sums_and_counts(  # pragma: no cover - compiled
    x: np.ndarray,
    skip: int,
    lengths: np.ndarray,
    lo: int,
    hi: int,
    shift: np.ndarray,
    inverse_width: np.ndarray,
    first: np.ndarray,
    sums: np.ndarray,
    positive: np.ndarray,
    counts: np.ndarray,
) -> None:
    """Sums of (x - shift)**1..4 and positives for neurons lo:hi; their bins added to counts
    (the bins must take the block's range: a bin is monotonic in the value, so covering the
    min and max covers every value)."""
    bins = counts.shape[1]
    width = hi - lo
    centre = shift[lo:hi]
    scale = inverse_width[lo:hi]
    # Flat bin = floor(x / w) - first + j * bins: floor of a float32 times a power of two is
    # an exact integer, and the rest is integer arithmetic.
    base = np.empty(width, np.int64)
    for j in range(width):
        base[j] = first[lo + j] - j * bins
    total = np.zeros((4, width))
    above = np.zeros(width)
    local = np.zeros(width * bins, np.int32)
    at = np.empty(width, np.int64)
    part = np.empty((4, width), np.float32)
    ones = np.empty(width, np.float32)
    for b in range(x.shape[0]):
        part[:] = 0
        ones[:] = 0
        for t in range(skip, skip + lengths[b]):
            row = x[b, t, lo:hi]
            for j in range(width):
                v = row[j]
                y = v - centre[j]
                y2 = y * y
                part[0, j] += y
                part[1, j] += y2
                part[2, j] += y2 * y
                part[3, j] += y2 * y2
                ones[j] += np.float32(1.0) if v > 0 else np.float32(0.0)
            for j in range(width):
                at[j] = np.int64(np.floor(row[j] * scale[j])) - base[j]
            for j in range(width):
                local[at[j]] += 1
        for j in range(width):
            for p in range(4):
                total[p, j] += part[p, j]
            above[j] += ones[j]
    for j in range(width):
        for p in range(4):
            sums[p, lo + j] = total[p, j]
        positive[lo + j] = above[j]
        for q in range(bins):
            counts[lo + j, q] += local[j * bins + q]


@_helper
def _copy_window(  # pragma: no cover - compiled
    x: np.ndarray, skip: int, length: int, row: int, neuron: int, out: np.ndarray
) -> int:
    """Copy one window's per-token values for a neuron into `out` (zeros after the window);
    returns the position of its max (the first, as torch's argmax)."""
    best = 0
    for t in range(length):
        out[t] = x[row, skip + t, neuron]
        if out[t] > out[best]:
            best = t
    out[length:] = 0.0
    return best


@_helper
def _worst_slot(values: np.ndarray, window: np.ndarray, c: int) -> int:  # pragma: no cover
    """The top-k slot to give up: the lowest max, on a tie the later window (empty: -inf, -1)."""
    worst = 0
    for s in range(1, values.shape[0]):
        if values[s, c] < values[worst, c] or (
            values[s, c] == values[worst, c] and window[s, c] > window[worst, c]
        ):
            worst = s
    return worst


@_helper
def _column_top(  # pragma: no cover - compiled
    c: int, batch: tuple, rows: np.ndarray, repeated: np.ndarray, top: tuple, entered: np.ndarray
) -> None:
    """TopWindows.update for neuron c: the batch rows `rows` (in stream order) enter one by
    one where they beat the worst kept window; `entered` [B] marks the rows that did. `batch`
    and `top`: the arrays _batch_arrays and _top_arrays give."""
    x, skip, lengths, window_max, window_index, window_hash = batch
    values, argmax, window, hashes, acts = top
    k = values.shape[0]
    worst = _worst_slot(values, window, c)
    old_hashes = hashes[:, c].copy()
    for r in rows:
        v = window_max[r, c]
        # Strictly above: rows come in stream order, so on a tie the kept window stays.
        if repeated[r] or not v > values[worst, c]:
            continue
        seen = False  # its text is kept already (checked against the slots as they were)
        for s in range(k):
            seen |= old_hashes[s] == window_hash[r]
        if seen:
            continue
        values[worst, c] = v
        window[worst, c] = window_index[r]
        hashes[worst, c] = window_hash[r]
        argmax[worst, c] = _copy_window(x, skip, lengths[r], r, c, acts[worst, c])
        entered[r] = True
        worst = _worst_slot(values, window, c)


@_helper
def _inverse_width(exponent: int) -> np.float32:  # pragma: no cover - compiled
    """1 / 2**exponent in float32, the exponent clamped as accumulators.band_bin clamps it."""
    return np.float32(math.ldexp(1.0, -min(max(exponent, -126), 126)))


@_helper
def _band_of(value: float, inverse: np.float32, bins: int) -> int:  # pragma: no cover
    """accumulators.band_bin for one value: floor(value / 2**exponent) in float32, clamped."""
    return min(max(math.floor(np.float32(value) * inverse), 0), bins - 1)


@_helper
def _move_slot(  # pragma: no cover - compiled
    c: int,
    to: int,
    frm: int,
    priority: np.ndarray,
    values: np.ndarray,
    argmax: np.ndarray,
    window: np.ndarray,
    acts: np.ndarray,
    source: np.ndarray,
) -> None:
    priority[to, c] = priority[frm, c]
    values[to, c] = values[frm, c]
    argmax[to, c] = argmax[frm, c]
    window[to, c] = window[frm, c]
    acts[to, c, :] = acts[frm, c, :]
    source[to] = source[frm]


@_helper
def _column_bands(  # pragma: no cover - compiled
    c: int, batch: tuple, batch_priority: np.ndarray, m: int, bands: tuple, entered: np.ndarray
) -> None:
    """BandSample.update for neuron c: widen the grid if the batch's max needs it (re-binning
    the kept windows, bottom m per new bin), then insert each window whose priority beats its
    bin's m-th, keeping every bin in priority order; `entered` [B] marks rows kept. `bands`:
    the arrays _band_arrays gives."""
    x, skip, lengths, window_max, window_index, _ = batch
    exponent, priority, values, argmax, window, acts = bands
    slots = priority.shape[0]
    bins = slots // m
    windows = window_max.shape[0]
    source = np.full(slots, -1, np.int64)  # per slot: the batch row it came from, or -1
    column_max = window_max[0, c]
    for r in range(1, windows):
        column_max = max(column_max, window_max[r, c])
    if column_max > 0 and math.frexp(column_max)[1] - 3 > exponent[c]:
        exponent[c] = math.frexp(column_max)[1] - 3
        old_priority = priority[:, c].copy()
        old_values = values[:, c].copy()
        old_argmax = argmax[:, c].copy()
        old_window = window[:, c].copy()
        old_acts = acts[:, c, :].copy()
        priority[:, c] = EMPTY_PRIORITY
        values[:, c] = 0.0
        argmax[:, c] = 0
        window[:, c] = -1
        filled = np.zeros(bins, np.int64)
        for _ in range(slots):  # the kept windows in priority order
            best = -1
            for s in range(slots):
                if old_window[s] >= 0 and (best < 0 or old_priority[s] < old_priority[best]):
                    best = s
            if best < 0:
                break
            k = _band_of(old_values[best], _inverse_width(exponent[c]), bins)
            if filled[k] < m:
                to = k * m + filled[k]
                filled[k] += 1
                priority[to, c] = old_priority[best]
                values[to, c] = old_values[best]
                argmax[to, c] = old_argmax[best]
                window[to, c] = old_window[best]
                acts[to, c, :] = old_acts[best]
            old_window[best] = -1
    inverse = _inverse_width(exponent[c])
    for r in range(windows):
        v = window_max[r, c]
        if not v > 0:
            continue
        k = _band_of(v, inverse, bins)
        p = batch_priority[r]
        last = k * m + m - 1
        if not p < priority[last, c]:  # the bin holds m smaller priorities
            continue
        at = k * m
        while priority[at, c] < p:
            at += 1
        if priority[at, c] == p:  # the same tokens, kept already
            continue
        for s in range(last, at, -1):
            _move_slot(c, s, s - 1, priority, values, argmax, window, acts, source)
        priority[at, c] = p
        values[at, c] = v
        window[at, c] = window_index[r]
        argmax[at, c] = _copy_window(x, skip, lengths[r], r, c, acts[at, c])
        source[at] = r
    for s in range(slots):
        if source[s] >= 0 and window[s, c] >= 0:
            entered[source[s]] = True


@_parallel
def _layer(  # pragma: no cover - compiled
    batch: tuple,
    extremes_only: bool,
    batch_min: np.ndarray,
    batch_max: np.ndarray,
    shift: np.ndarray,
    histogram: tuple,
    sums: np.ndarray,
    positive: np.ndarray,
    rows: np.ndarray,
    repeated: np.ndarray,
    top: tuple,
    band_m: int,
    band_priority: np.ndarray,
    bands: tuple,
    entered: np.ndarray,
) -> None:
    x, skip, lengths, window_max, _, _ = batch
    inverse_width, first, counts = histogram
    n = x.shape[2]
    for block in prange((n + BLOCK - 1) // BLOCK):
        lo = block * BLOCK
        hi = min(n, lo + BLOCK)
        _block_extremes(x, skip, lengths, lo, hi, window_max, batch_min, batch_max)
        if extremes_only:
            continue
        for c in range(lo, hi):
            _cover(c, batch_min[c], batch_max[c], counts, inverse_width, first)
        _block_sums_and_counts(
            x, skip, lengths, lo, hi, shift, inverse_width, first, sums, positive, counts
        )
        for c in range(lo, hi):
            _column_top(c, batch, rows, repeated, top, entered[block])
            if band_m:
                _column_bands(c, batch, band_priority, band_m, bands, entered[block])


@_parallel
def _tops(  # pragma: no cover - compiled
    batch: tuple, rows: np.ndarray, repeated: np.ndarray, top: tuple, entered: np.ndarray
) -> None:
    n = top[0].shape[1]
    for block in prange((n + BLOCK - 1) // BLOCK):
        for c in range(block * BLOCK, min(n, (block + 1) * BLOCK)):
            _column_top(c, batch, rows, repeated, top, entered[block])


def _threads() -> None:
    threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    numba.set_num_threads(threads)


def as_array(acts: torch.Tensor) -> tuple[np.ndarray, int]:
    """A [B, T, N] float32 view as a C-contiguous [B, T + skip, N] array and its skip: the
    scan's activations drop the BOS position from the hook's contiguous tensor, and reading
    that tensor in place saves a copy of the batch."""
    batch, width, n = acts.shape
    if acts.is_contiguous():
        return acts.numpy(), 0
    row_stride = acts.stride(0)
    skip, leftover = divmod(row_stride - width * n, n)
    offset = acts.storage_offset() - skip * n
    if acts.stride()[1:] == (n, 1) and leftover == 0 and skip > 0 and offset >= 0:
        parent = torch.as_strided(acts, (batch, width + skip, n), (row_stride, n, 1), offset)
        return parent.numpy(), skip
    return acts.contiguous().numpy(), 0


def _repeated(window_hash: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Per batch row: whether an earlier row among `rows` has the same text (it never enters:
    the first one stands for it)."""
    repeated = torch.zeros(window_hash.shape[0], dtype=torch.bool)
    hashes = window_hash[rows]
    repeated[rows] = torch.tril(hashes[:, None] == hashes[None, :], diagonal=-1).any(dim=1)
    return repeated


def _batch_arrays(
    x: np.ndarray,
    skip: int,
    lengths: np.ndarray,
    window_max: np.ndarray,
    window_index: torch.Tensor,
    window_hash: torch.Tensor,
) -> tuple:
    """A batch as the kernels read it: activations, skip, lengths, window maxima, indices,
    hashes."""
    return (x, skip, lengths, window_max, window_index.numpy(), window_hash.numpy())


def _top_arrays(top: TopWindows) -> tuple:
    return (
        top.values.numpy(),
        top.argmax.numpy(),
        top.window.numpy(),
        top.hash.numpy(),
        top.acts.numpy(),
    )


def _band_arrays(bands: BandSample) -> tuple:
    return (
        bands.exponent.numpy(),
        bands.priority.numpy(),
        bands.values.numpy(),
        bands.argmax.numpy(),
        bands.window.numpy(),
        bands.acts.numpy(),
    )


@functools.cache
def _no_band_arrays() -> tuple:
    """A one-slot band sample's arrays, made once: what the kernel is handed without bands."""
    return _band_arrays(BandSample(1, 1, 1, 1, torch.device("cpu")))


def _rows(entered: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(entered.any(axis=0)).nonzero().squeeze(1)


def update_layer(
    acts: torch.Tensor,
    lengths: np.ndarray,
    window_index: torch.Tensor,
    window_hash: torch.Tensor,
    priority: torch.Tensor,
    moments: Moments,
    histogram: AdaptiveHistogram,
    top: TopWindows,
    bands: BandSample | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Update a layer's moments, histogram, top windows and band samples with a batch: `acts`
    [B, T, N] float32 on CPU (the hook's tensor, read in place), `lengths` [B] its windows'
    real tokens. Returns each window's max [B, N] and the batch rows that some neuron kept.

    On the first batch the extremes come first, alone: the histogram's range and the moments'
    centre are set from them (as the torch path sets them) before the one full pass."""
    x, skip = as_array(acts)
    batch, _, n = x.shape
    window_max = np.empty((batch, n), np.float32)
    batch_min = np.empty(n, np.float32)
    batch_max = np.empty(n, np.float32)
    sums = np.empty((4, n))
    positive = np.empty(n)
    blocks = (n + BLOCK - 1) // BLOCK
    entered = np.zeros((blocks, batch), np.bool_)
    rows = torch.arange(batch)
    repeated = _repeated(window_hash, rows).numpy()
    # Without bands the kernel is handed a one-slot stand-in it never reads (m = 0).
    band_arrays = _band_arrays(bands) if bands is not None else _no_band_arrays()
    _threads()

    arrays = _batch_arrays(x, skip, lengths, window_max, window_index, window_hash)

    def run(extremes_only: bool, shift: torch.Tensor) -> None:
        _layer(
            arrays,
            extremes_only,
            batch_min,
            batch_max,
            shift.numpy(),
            (histogram.inverse_width.numpy(), histogram.first.numpy(), histogram.counts.numpy()),
            sums,
            positive,
            rows.numpy(),
            repeated,
            _top_arrays(top),
            bands.m if bands is not None else 0,
            priority.numpy(),
            band_arrays,
            entered,
        )

    low, high = torch.from_numpy(batch_min), torch.from_numpy(batch_max)  # views: filled by run
    if not histogram.started:
        run(True, torch.zeros(n))
        histogram.cover(low, high)
    shift = moments.shift(low, high)
    run(False, shift)
    moments.add_sums(
        float(lengths.sum()),
        shift,
        torch.from_numpy(sums),
        torch.from_numpy(positive),
        low,
        high,
    )
    return torch.from_numpy(window_max), _rows(entered)


def update_tops(
    tops: list[tuple[TopWindows, torch.Tensor]],
    acts: torch.Tensor,
    lengths: np.ndarray,
    window_max: torch.Tensor,
    window_index: torch.Tensor,
    window_hash: torch.Tensor,
) -> torch.Tensor:
    """TopWindows.update for each (top, batch rows) pair, e.g. a subset's top windows and that
    subset's rows; returns the batch rows that entered any."""
    x, skip = as_array(acts)
    arrays = _batch_arrays(x, skip, lengths, window_max.numpy(), window_index, window_hash)
    kept = [torch.zeros(0, dtype=torch.long)]
    _threads()
    for top, rows in tops:
        entered = np.zeros(((top.values.shape[1] + BLOCK - 1) // BLOCK, x.shape[0]), np.bool_)
        repeated = _repeated(window_hash, rows).numpy()
        _tops(arrays, rows.numpy(), repeated, _top_arrays(top), entered)
        kept.append(_rows(entered))
    return torch.cat(kept)


def available() -> bool:
    """The compiled kernels run on CPU tensors; LABELLER_TORCH_STATISTICS=1 turns them off
    (the tests compare both paths)."""
    return os.environ.get("LABELLER_TORCH_STATISTICS") != "1"
