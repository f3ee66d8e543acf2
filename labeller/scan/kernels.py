"""Fused CPU passes over one layer's batch of activations, compiled with numba.

On CPU the scan's statistics are memory-bound: as separate torch ops (min, max, window max,
four power sums, positives, histogram bins, bincount) they read every activation about a dozen
times and cost a quarter of a one-thread forward pass. Here two passes read it twice, split by
neuron blocks over every core, so the model and the statistics can both use the whole machine.
The first pass gives what the second needs to know before binning (the batch's range, to grow
the histograms; on the first batch, the moments' shift). Exactness is kept: window maxima and
extremes are the float32 values themselves, histogram bins are computed as the torch path
computes them (a power-of-two scale, exact in float32), and power sums are taken per window in
float32 and summed over windows in float64.

The first call compiles the kernels (a few seconds); numba caches them on disk for later runs.
"""

from __future__ import annotations

import math
import os

import numba
import numpy as np
import torch
from numba import njit, prange

from labeller.scan.accumulators import EMPTY_PRIORITY, BandSample, TopWindows

BLOCK = 128  # neurons per task: a block's rows of 64 tokens fit in L1, its histogram in L2
_FLAGS = {"reassoc", "contract", "nsz", "arcp"}  # not nnan/ninf: -inf and NaN stay meaningful
# Cached on disk, without the GIL (other Python threads run meanwhile), no bounds checks.
_COMPILED = {"cache": True, "nogil": True, "boundscheck": False}


@njit(**_COMPILED, parallel=True, fastmath=_FLAGS, error_model="numpy")
def _extremes(  # pragma: no cover - compiled
    x: np.ndarray,
    skip: int,
    lengths: np.ndarray,
    window_max: np.ndarray,
    batch_min: np.ndarray,
    batch_max: np.ndarray,
) -> None:
    batch, _, n = x.shape
    for block in prange((n + BLOCK - 1) // BLOCK):
        lo = block * BLOCK
        hi = min(n, lo + BLOCK)
        width = hi - lo
        low = np.full(width, np.inf, np.float32)
        high = np.full(width, -np.inf, np.float32)
        top = np.empty(width, np.float32)
        for b in range(batch):
            top[:] = -np.inf
            for t in range(skip, skip + lengths[b]):
                row = x[b, t, lo:hi]
                for j in range(width):
                    top[j] = max(top[j], row[j])
                    low[j] = min(low[j], row[j])
            for j in range(width):
                window_max[b, lo + j] = top[j]
                high[j] = max(high[j], top[j])
        for j in range(width):
            batch_min[lo + j] = low[j]
            batch_max[lo + j] = high[j]


@njit(**_COMPILED, parallel=True, fastmath=_FLAGS, error_model="numpy")
def _sums_and_counts(  # pragma: no cover - compiled
    x: np.ndarray,
    skip: int,
    lengths: np.ndarray,
    shift: np.ndarray,
    inverse_width: np.ndarray,
    first: np.ndarray,
    sums: np.ndarray,
    positive: np.ndarray,
    counts: np.ndarray,
) -> None:
    batch, _, n = x.shape
    bins = counts.shape[1]
    for block in prange((n + BLOCK - 1) // BLOCK):
        lo = block * BLOCK
        hi = min(n, lo + BLOCK)
        width = hi - lo
        centre = shift[lo:hi]
        scale = inverse_width[lo:hi]
        # Flat bin = floor(x / w) - first + j * bins: floor of a float32 times a power of two
        # is an exact integer, and the rest is integer arithmetic.
        base = np.empty(width, np.int64)
        for j in range(width):
            base[j] = first[lo + j] - j * bins
        total = np.zeros((4, width))
        above = np.zeros(width)
        local = np.zeros(width * bins, np.int32)
        at = np.empty(width, np.int64)
        part = np.empty((4, width), np.float32)
        ones = np.empty(width, np.float32)
        for b in range(batch):
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


def _threads() -> None:
    numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


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


def window_extremes(
    x: np.ndarray, skip: int, lengths: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each window's max over its real tokens [B, N], and the batch's min and max [N]."""
    _threads()
    batch, _, n = x.shape
    window_max = np.empty((batch, n), np.float32)
    batch_min = np.empty(n, np.float32)
    batch_max = np.empty(n, np.float32)
    _extremes(x, skip, lengths, window_max, batch_min, batch_max)
    return torch.from_numpy(window_max), torch.from_numpy(batch_min), torch.from_numpy(batch_max)


def power_sums_and_counts(
    x: np.ndarray,
    skip: int,
    lengths: np.ndarray,
    batch_min: torch.Tensor,
    batch_max: torch.Tensor,
    shift: torch.Tensor,
    inverse_width: torch.Tensor,
    first: torch.Tensor,
    counts: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of (x - shift)**1..4 per neuron [4, N] and positive counts [N], both float64; adds
    every real token's histogram bin to `counts` [N, bins] (int64, in place).

    The histogram's range must cover the batch: checked on its min and max (a bin is monotonic
    in the value), so the kernel's loop need not check every value."""
    bins = counts.shape[1]
    low = torch.floor(batch_min * inverse_width).long() - first
    high = torch.floor(batch_max * inverse_width).long() - first
    if bool((low < 0).any() | (high >= bins).any()):
        raise RuntimeError("activations fall outside their histogram's range: cover() first")
    _threads()
    n = x.shape[2]
    sums = np.empty((4, n))
    positive = np.empty(n)
    _sums_and_counts(
        x,
        skip,
        lengths,
        shift.numpy(),
        inverse_width.numpy(),
        first.numpy(),
        sums,
        positive,
        counts.numpy(),
    )
    return torch.from_numpy(sums), torch.from_numpy(positive)


def available() -> bool:
    """The fused kernels run on CPU tensors; LABELLER_TORCH_STATISTICS=1 turns them off (the
    tests compare both paths)."""
    return os.environ.get("LABELLER_TORCH_STATISTICS") != "1"


@njit(**_COMPILED)
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


@njit(**_COMPILED, parallel=True)
def _top_update(  # pragma: no cover - compiled
    x: np.ndarray,
    skip: int,
    lengths: np.ndarray,
    window_max: np.ndarray,
    rows: np.ndarray,
    repeated: np.ndarray,
    window_index: np.ndarray,
    window_hash: np.ndarray,
    values: np.ndarray,
    argmax: np.ndarray,
    window: np.ndarray,
    hashes: np.ndarray,
    acts: np.ndarray,
    entered: np.ndarray,
) -> None:
    k, n = values.shape
    for block in prange((n + BLOCK - 1) // BLOCK):
        old_hashes = np.empty(k, np.int64)
        for c in range(block * BLOCK, min(n, (block + 1) * BLOCK)):
            # The slot to give up: the lowest max, on a tie the later window (empty: -inf, -1).
            worst = 0
            for s in range(1, k):
                if values[s, c] < values[worst, c] or (
                    values[s, c] == values[worst, c] and window[s, c] > window[worst, c]
                ):
                    worst = s
            old_hashes[:] = hashes[:, c]
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
                entered[block, r] = True
                worst = 0
                for s in range(1, k):
                    if values[s, c] < values[worst, c] or (
                        values[s, c] == values[worst, c] and window[s, c] > window[worst, c]
                    ):
                        worst = s


def top_update(
    top: TopWindows,
    x: np.ndarray,
    skip: int,
    lengths: np.ndarray,
    window_max: torch.Tensor,
    window_index: torch.Tensor,
    window_hash: torch.Tensor,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """TopWindows.update by a per-neuron loop (`top` a TopWindows): the same windows enter,
    by the same rules; returns the batch rows that entered."""
    batch = window_max.shape[0]
    taking = torch.arange(batch) if rows is None else rows
    hashes = window_hash[taking]
    repeated = torch.zeros(batch, dtype=torch.bool)
    repeated[taking] = torch.tril(hashes[:, None] == hashes[None, :], diagonal=-1).any(dim=1)
    blocks = (window_max.shape[1] + BLOCK - 1) // BLOCK
    entered = np.zeros((blocks, batch), np.bool_)
    _threads()
    _top_update(
        x,
        skip,
        lengths,
        window_max.numpy(),
        taking.numpy(),
        repeated.numpy(),
        window_index.numpy(),
        window_hash.numpy(),
        top.values.numpy(),
        top.argmax.numpy(),
        top.window.numpy(),
        top.hash.numpy(),
        top.acts.numpy(),
        entered,
    )
    return torch.from_numpy(entered.any(axis=0)).nonzero().squeeze(1)


@njit(**_COMPILED)
def _band_of(value: float, exponent: int, bins: int) -> int:  # pragma: no cover - compiled
    """accumulators.band_bin for one value: floor(value / 2**exponent) in float32, clamped."""
    inverse = np.float32(math.ldexp(1.0, -min(max(exponent, -126), 126)))
    return min(max(math.floor(np.float32(value) * inverse), 0), bins - 1)


@njit(**_COMPILED)
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


@njit(**_COMPILED, parallel=True)
def _band_update(  # pragma: no cover - compiled
    x: np.ndarray,
    skip: int,
    lengths: np.ndarray,
    window_max: np.ndarray,
    window_index: np.ndarray,
    batch_priority: np.ndarray,
    m: int,
    empty: int,
    exponent: np.ndarray,
    priority: np.ndarray,
    values: np.ndarray,
    argmax: np.ndarray,
    window: np.ndarray,
    acts: np.ndarray,
    entered: np.ndarray,
) -> None:
    slots, n = priority.shape
    bins = slots // m
    batch = window_max.shape[0]
    for block in prange((n + BLOCK - 1) // BLOCK):
        source = np.empty(slots, np.int64)  # per slot: the batch row it came from, or -1
        old_priority = np.empty(slots, np.int64)
        old_values = np.empty(slots, np.float32)
        old_argmax = np.empty(slots, np.int64)
        old_window = np.empty(slots, np.int64)
        old_acts = np.empty((slots, acts.shape[2]), np.float32)
        filled = np.empty(bins, np.int64)
        for c in range(block * BLOCK, min(n, (block + 1) * BLOCK)):
            source[:] = -1
            column_max = window_max[0, c]
            for r in range(1, batch):
                column_max = max(column_max, window_max[r, c])
            grown = False
            if column_max > 0:
                needed = math.frexp(column_max)[1] - 3
                if needed > exponent[c]:
                    exponent[c] = needed
                    grown = True
            if grown:  # bins merged in pairs: re-bin the kept windows, bottom m per new bin
                old_priority[:] = priority[:, c]
                old_values[:] = values[:, c]
                old_argmax[:] = argmax[:, c]
                old_window[:] = window[:, c]
                old_acts[:, :] = acts[:, c, :]
                priority[:, c] = empty
                values[:, c] = 0.0
                argmax[:, c] = 0
                window[:, c] = -1
                filled[:] = 0
                for _ in range(slots):  # the kept windows in priority order
                    best = -1
                    for s in range(slots):
                        if old_window[s] >= 0 and (
                            best < 0 or old_priority[s] < old_priority[best]
                        ):
                            best = s
                    if best < 0:
                        break
                    k = _band_of(old_values[best], exponent[c], bins)
                    if filled[k] < m:
                        to = k * m + filled[k]
                        filled[k] += 1
                        priority[to, c] = old_priority[best]
                        values[to, c] = old_values[best]
                        argmax[to, c] = old_argmax[best]
                        window[to, c] = old_window[best]
                        acts[to, c, :] = old_acts[best]
                    old_window[best] = -1
            for r in range(batch):
                v = window_max[r, c]
                if not v > 0:
                    continue
                k = _band_of(v, exponent[c], bins)
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
                    entered[block, source[s]] = True


def band_update(
    bands: BandSample,
    x: np.ndarray,
    skip: int,
    lengths: np.ndarray,
    window_max: torch.Tensor,
    window_index: torch.Tensor,
    priority: torch.Tensor,
) -> torch.Tensor:
    """BandSample.update by a per-neuron loop: the same bottom-m sample per band, in the same
    slots; returns the batch rows that entered."""
    batch, n = window_max.shape
    entered = np.zeros(((n + BLOCK - 1) // BLOCK, batch), np.bool_)
    _threads()
    _band_update(
        x,
        skip,
        lengths,
        window_max.numpy(),
        window_index.numpy(),
        priority.numpy(),
        bands.m,
        EMPTY_PRIORITY,
        bands.exponent.numpy(),
        bands.priority.numpy(),
        bands.values.numpy(),
        bands.argmax.numpy(),
        bands.window.numpy(),
        bands.acts.numpy(),
        entered,
    )
    return torch.from_numpy(entered.any(axis=0)).nonzero().squeeze(1)
