"""Streaming per-neuron state for one layer: top-k windows, moments, histogram, random windows.

Memory is O(neurons x k x ctx) whatever the corpus size. Every update is a handful of vectorised
tensor ops on the batch, so the scan runs close to the speed of the bare forward pass.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

import torch

State = dict[str, torch.Tensor]


def _padded(values: torch.Tensor, mask: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
    """Windows' per-token values [E, T] with padding at -inf: `mask` [B, T] (real tokens) taken
    at the windows' batch rows, or None where the padding is -inf already."""
    return values if mask is None else values.masked_fill(~mask[rows], -math.inf)


class TopWindows:
    """The k windows with the highest maximum activation, per neuron, with per-token values.

    Windows are compared by content hash, so the same text never fills two slots of a neuron.
    Ties go to the window seen first (the lower stream index), the rule merge_top follows too.
    Slots are kept unordered, so a window that enters takes a freed slot and nothing else
    moves; state() returns them ranked (highest max first, ties by window index).
    """

    def __init__(self, k: int, n: int, ctx: int, device: torch.device) -> None:
        self.k = k
        self.values = torch.full((k, n), -math.inf, device=device)
        self.argmax = torch.zeros((k, n), dtype=torch.long, device=device)
        self.window = torch.full((k, n), -1, dtype=torch.long, device=device)
        self.hash = torch.zeros((k, n), dtype=torch.long, device=device)
        self.acts = torch.zeros((k, n, ctx), device=device)

    def update(
        self,
        acts: torch.Tensor,
        window_max: torch.Tensor,
        window_index: torch.Tensor,
        window_hash: torch.Tensor,
        rows: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Merge a batch: `acts` [B, T, N] with padding at -inf (or anything, where `mask` [B, T]
        says which tokens are real), `window_max` [B, N] its max over the real tokens,
        `window_index` [B] increasing; with `rows`, only those rows of the batch take part (a
        subset's, without copying their activations). Returns the batch rows that entered any
        top-k.

        Only the columns (neurons) where some window beats the current k-th best are touched,
        and only the entering windows' values are copied."""
        if rows is not None:
            window_max, window_index, window_hash = (
                window_max[rows],
                window_index[rows],
                window_hash[rows],
            )
        same = window_hash[:, None] == window_hash[None, :]
        repeated_in_batch = torch.tril(same, diagonal=-1).any(dim=1)
        window_max = window_max.masked_fill(repeated_in_batch[:, None], -math.inf)
        # Strictly above the k-th best: on a tie the kept (earlier) window stays.
        candidate = window_max > self.values.amin(dim=0)[None, :]
        cols = candidate.any(dim=0).nonzero().squeeze(1)
        if cols.numel() == 0:
            return torch.zeros(0, dtype=torch.long, device=acts.device)

        in_cols = candidate.index_select(1, cols)
        cand_max = window_max.index_select(1, cols).masked_fill(~in_cols, -math.inf)
        # A window already kept by a column (its text seen before) must not enter it again:
        # checked for the candidates only, a few after the first batches.
        at_row, at_col = in_cols.nonzero(as_tuple=True)
        kept_hashes = self.hash[:, cols[at_col]]  # [k, candidates]
        already_kept = (window_hash[at_row][None, :] == kept_hashes).any(dim=0)
        cand_max[at_row[already_kept], at_col[already_kept]] = -math.inf
        old_index = self.window.index_select(1, cols)
        pool_index = torch.cat([old_index, window_index[:, None].expand(-1, cols.numel())])
        order = _top_by_value_then_index(
            torch.cat([self.values.index_select(1, cols), cand_max]), pool_index, self.k
        )
        chosen = torch.zeros(pool_index.shape, dtype=torch.bool, device=acts.device)
        chosen.scatter_(0, order, True)
        # Per column as many slots are freed as rows enter: pair them in ascending order (a
        # masked row never enters, as an empty slot, index -1, wins the tie at -inf).
        _, slot = (~chosen[: self.k]).T.nonzero(as_tuple=True)
        col_in, row = chosen[self.k :].T.nonzero(as_tuple=True)
        neuron = cols[col_in]
        batch_row = row if rows is None else rows[row]
        entrants = _padded(acts[batch_row, :, neuron], mask, batch_row)  # [E, T]
        self.values[slot, neuron] = window_max[row, neuron]
        self.argmax[slot, neuron] = entrants.argmax(dim=1)
        self.window[slot, neuron] = window_index[row]
        self.hash[slot, neuron] = window_hash[row]
        values = entrants.masked_fill(torch.isneginf(entrants), 0.0)
        if acts.shape[1] < self.acts.shape[2]:  # a batch of short windows: zeros after them
            values = torch.nn.functional.pad(values, (0, self.acts.shape[2] - acts.shape[1]))
        self.acts[slot, neuron] = values
        return torch.unique(batch_row)

    def state(self) -> State:
        """The slots ranked per neuron: highest max first, ties by window index, empty last."""
        last = torch.iinfo(torch.long).max
        order = _order_by(-self.values, self.window.masked_fill(self.window < 0, last))
        return {
            "values": self.values.gather(0, order),
            "argmax": self.argmax.gather(0, order),
            "window": self.window.gather(0, order),
            "hash": self.hash.gather(0, order),
            "acts": self.acts.gather(0, order[:, :, None].expand(-1, -1, self.acts.shape[2])),
        }

    def load(self, state: State) -> None:
        for name, tensor in state.items():
            getattr(self, name).copy_(tensor)


def subset_rows(subsets: list[str | None], device: torch.device) -> dict[str, torch.Tensor]:
    """Each subset met in a batch (subsets: each row's) and its rows, by name; made once a
    batch for every layer."""
    return {
        name: torch.tensor([i for i, s in enumerate(subsets) if s == name], device=device)
        for name in sorted({s for s in subsets if s is not None})
    }


class SubsetTopWindows:
    """The k top windows per neuron within each named corpus subset: one TopWindows per subset,
    made when the subset's first window arrives (a subset field's values are not known ahead).

    A neuron's top windows over the whole corpus can all come from one kind of text; kept per
    subset, they show what it does on each (the interpretability-illusion check)."""

    def __init__(self, k: int, n: int, ctx: int, device: torch.device) -> None:
        self.k, self.n, self.ctx, self.device = k, n, ctx, device
        self.subsets: dict[str, TopWindows] = {}

    def update(
        self,
        acts: torch.Tensor,
        window_max: torch.Tensor,
        window_index: torch.Tensor,
        window_hash: torch.Tensor,
        subsets: list[str | None],
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Each batch row goes to its subset's top-k (rows of no subset to none); returns the
        rows some subset kept, as TopWindows.update does."""
        kept = [torch.zeros(0, dtype=torch.long, device=acts.device)]
        for top, rows in self.batch_parts(subset_rows(subsets, acts.device)):
            kept.append(top.update(acts, window_max, window_index, window_hash, rows, mask))
        return torch.cat(kept)

    def batch_parts(
        self, rows: Mapping[str, torch.Tensor]
    ) -> list[tuple[TopWindows, torch.Tensor]]:
        """Per subset met in a batch (`subset_rows`), its TopWindows and its rows."""
        parts = []
        for name, members in rows.items():
            top = self.subsets.get(name)
            if top is None:
                top = self.subsets[name] = TopWindows(self.k, self.n, self.ctx, self.device)
            parts.append((top, members))
        return parts

    def windows(self) -> torch.Tensor:
        """Every window index some subset's top-k holds (-1 for empty slots included)."""
        parts = [top.window.view(-1) for top in self.subsets.values()]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def state(self) -> dict[str, State]:
        return {name: top.state() for name, top in sorted(self.subsets.items())}

    def load(self, state: dict[str, State]) -> None:
        self.subsets = {}
        for name, part in state.items():
            top = self.subsets[name] = TopWindows(self.k, self.n, self.ctx, self.device)
            top.load(part)


EMPTY_PRIORITY = torch.iinfo(torch.long).max


class BandSample:
    """Per neuron, a uniform sample of `m` windows from each activation band, exact and
    unbiased whatever the order and batching of the stream.

    Every window has a random priority (a seeded hash of its tokens, shared by all neurons).
    Per neuron, bins are `bins` equal-width intervals [i w, (i+1) w) on a power-of-two grid
    anchored at 0, with w the power of two for which 4 w <= running max < 8 w (so the width
    only ever doubles as the max grows, and bins merge in pairs). Each bin keeps the `m`
    windows with the smallest priorities among the windows whose maximum activation for the
    neuron falls in it: a uniform sample without replacement of that band. Keeping the bottom
    `m` commutes with merging (the bottom m of a union is the bottom m of the two bottom-m
    sets), so the final bins hold exactly the bottom m of every window that ever fell in them.
    Windows with max <= 0 are not banded; windows with the same tokens count once (they have
    the same priority). Memory: bins x m x ctx floats per neuron.
    """

    def __init__(self, m: int, bins: int, n: int, ctx: int, device: torch.device) -> None:
        self.m = m
        self.bins = bins
        slots = m * bins
        self.exponent = torch.full((n,), -(2**20), dtype=torch.long, device=device)  # log2 w
        self.priority = torch.full((slots, n), EMPTY_PRIORITY, dtype=torch.long, device=device)
        self.values = torch.zeros((slots, n), device=device)
        self.argmax = torch.zeros((slots, n), dtype=torch.long, device=device)
        self.window = torch.full((slots, n), -1, dtype=torch.long, device=device)
        self.acts = torch.zeros((slots, n, ctx), device=device)

    def _bin(self, values: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
        return band_bin(values, exponent, self.bins)

    def update(
        self,
        acts: torch.Tensor,
        window_max: torch.Tensor,
        window_index: torch.Tensor,
        priority: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Merge a batch: `acts` [B, T, N] with padding at -inf (or `mask` as TopWindows.update
        takes it), `window_max` [B, N], `priority` [B]. Returns the batch rows that entered any
        band sample.

        A window is a candidate for a neuron only if its priority beats the m-th of its bin,
        which after the first batches is rare (about m ln(n / m) entrants over a band of n
        windows), so an update mostly costs the comparison.
        """
        width = acts.shape[1]
        window_max = window_max.float()
        positive = window_max > 0
        column_max = window_max.amax(dim=0)
        _, needed = torch.frexp(column_max)
        exponent = torch.where(
            column_max > 0, torch.maximum(self.exponent, needed.long() - 3), self.exponent
        )
        grown = exponent != self.exponent
        self.exponent = exponent
        batch_bin = self._bin(window_max.clamp(min=0), exponent[None, :])  # [B, N]
        sorted_priority = self.priority.view(self.bins, self.m, -1)
        threshold = sorted_priority[:, -1, :].gather(0, batch_bin)  # m-th priority of the bin
        candidate = positive & ((priority[:, None] < threshold) | grown[None, :])
        cols = (candidate.any(dim=0) | grown).nonzero().squeeze(1)
        if cols.numel() == 0:
            return torch.zeros(0, dtype=torch.long, device=acts.device)

        slots, batch = self.m * self.bins, window_max.shape[0]
        exp_c = exponent[cols]
        old_priority = self.priority[:, cols]  # [S, C]
        old_bin = self._bin(self.values[:, cols], exp_c[None, :])
        new_priority = priority[:, None].expand(-1, cols.numel())
        new_priority = new_priority.masked_fill(~candidate[:, cols], EMPTY_PRIORITY)
        pool_priority = torch.cat([old_priority, new_priority], dim=0)  # [P, C]
        pool_bin = torch.cat([old_bin, batch_bin[:, cols]], dim=0)
        order = pool_priority.argsort(dim=0, stable=True)  # old before new on equal priority
        pool_priority = pool_priority.gather(0, order)
        pool_bin = pool_bin.gather(0, order)
        valid = pool_priority != EMPTY_PRIORITY
        repeat = torch.zeros_like(valid)
        repeat[1:] = pool_priority[1:] == pool_priority[:-1]  # the same tokens seen again
        valid &= ~repeat
        one_hot = torch.nn.functional.one_hot(pool_bin, self.bins) * valid[:, :, None]
        rank = one_hot.cumsum(dim=0).gather(2, pool_bin[:, :, None]).squeeze(2) - 1
        keep = valid & (rank < self.m)
        target = torch.where(keep, pool_bin * self.m + rank, slots)  # slots: discarded

        # Source of each kept slot: an old slot (< slots) or a batch row (slots + b).
        source = torch.full((slots + 1, cols.numel()), -1, dtype=torch.long, device=acts.device)
        source.scatter_(0, target, order)
        source = source[:slots]
        empty = source < 0
        from_old = (source < slots) & ~empty
        old_i = source.clamp(0, slots - 1)
        new_b = (source - slots).clamp(0, batch - 1)

        def pick(old: torch.Tensor, new: torch.Tensor, blank: float | int) -> torch.Tensor:
            chosen = torch.where(from_old, old[:, cols].gather(0, old_i), new)
            return chosen.masked_fill(empty, blank)

        # Per-token values move only where a slot's occupant changed (a few slots per batch once
        # the bands fill): gather those before any is overwritten. Empty slots keep stale values
        # (never read: their window is -1).
        slot_ids = torch.arange(slots, device=acts.device)[:, None]
        changed = ~empty & ~(from_old & (old_i == slot_ids))
        slot_at, col_at = changed.nonzero(as_tuple=True)
        neuron_at = cols[col_at]
        moved = from_old[slot_at, col_at]
        kept_acts = self.acts[old_i[slot_at, col_at], neuron_at]  # [K, ctx]
        entering = new_b[slot_at, col_at]
        rows = _padded(acts[entering, :, neuron_at], mask, entering)  # [K, T]
        new_argmax = rows.argmax(dim=1)
        fresh = torch.zeros_like(kept_acts)
        fresh[:, :width] = rows.masked_fill(torch.isneginf(rows), 0.0)
        self.acts[slot_at, neuron_at] = torch.where(moved[:, None], kept_acts, fresh)
        argmax = self.argmax[:, cols].gather(0, old_i)
        argmax[slot_at, col_at] = torch.where(moved, argmax[slot_at, col_at], new_argmax)
        self.argmax[:, cols] = argmax.masked_fill(empty, 0)
        self.priority[:, cols] = pick(self.priority, priority[new_b], EMPTY_PRIORITY)
        self.values[:, cols] = pick(self.values, window_max[new_b, cols[None, :]], 0.0)
        self.window[:, cols] = pick(self.window, window_index[new_b], -1)
        return torch.unique(new_b[~from_old & ~empty])

    def bands(self, neuron: int) -> list[tuple[int, int, float, int]]:
        """A neuron's kept windows as (bin, slot, window max, window index), bin by bin, each
        bin in priority order (its sampling order)."""
        found = []
        window = self.window[:, neuron].tolist()
        values = self.values[:, neuron].tolist()
        for slot, index in enumerate(window):
            if index >= 0:
                found.append((slot // self.m, slot, values[slot], index))
        return found

    def state(self) -> State:
        return {
            "exponent": self.exponent,
            "priority": self.priority,
            "values": self.values,
            "argmax": self.argmax,
            "window": self.window,
            "acts": self.acts,
        }

    def load(self, state: State) -> None:
        for name, tensor in state.items():
            setattr(self, name, tensor.clone())


class Moments:
    """Count, mean and central moments M2..M4 per neuron, merged exactly batch by batch (Pébay).

    Each batch is summarised by power sums about the running mean (so float32 sums stay well
    conditioned), computed in place in reused buffers: on CPU, allocating fresh batch-sized
    tensors costs more than the arithmetic.
    """

    def __init__(self, n: int, device: torch.device) -> None:
        zeros = lambda: torch.zeros(n, dtype=torch.float64, device=device)  # noqa: E731
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.mean, self.m2, self.m3, self.m4 = zeros(), zeros(), zeros(), zeros()
        self.positive = torch.zeros(n, dtype=torch.float64, device=device)
        self.min = torch.full((n,), math.inf, dtype=torch.float64, device=device)
        self.max = torch.full((n,), -math.inf, dtype=torch.float64, device=device)
        self.batches = 0  # kept on the host: asking the device if count > 0 would synchronise

    def shift(self, batch_min: torch.Tensor, batch_max: torch.Tensor) -> torch.Tensor:
        """The float32 centre the next batch's power sums are taken about: the running mean,
        or on the first batch the middle of its range."""
        return (self.mean.float() if self.batches else (batch_min + batch_max) / 2).float()

    def update(
        self,
        x: torch.Tensor,
        batch_min: torch.Tensor,
        batch_max: torch.Tensor,
        scratch: tuple[torch.Tensor, torch.Tensor],
    ) -> None:
        """x: [M, N] activations of real (unpadded) tokens, contiguous (on CPU a reduction over
        the rows of a strided view is ~30x slower than over a contiguous copy); scratch: two
        float buffers shaped like x. The torch path (GPU); on CPU the scan's fused kernel takes
        the sums and hands them to add_sums."""
        y, y2 = scratch
        shift = self.shift(batch_min, batch_max).to(x.dtype)
        # Positives counted as float ones: summing a bool tensor converts it to int64 first,
        # ten times slower. Exact: a batch holds far fewer than 2**24 tokens.
        torch.gt(x, 0, out=y2)
        positive = y2.sum(dim=0).double()
        torch.sub(x, shift, out=y)
        torch.mul(y, y, out=y2)
        s1 = y.sum(dim=0).double()
        s2 = y2.sum(dim=0).double()
        y2.mul_(y)
        s3 = y2.sum(dim=0).double()
        y2.mul_(y)
        s4 = y2.sum(dim=0).double()
        self.add_sums(
            float(x.shape[0]), shift, torch.stack([s1, s2, s3, s4]), positive, batch_min, batch_max
        )

    def add_sums(
        self,
        nb: float,
        shift: torch.Tensor,
        sums: torch.Tensor,
        positive: torch.Tensor,
        batch_min: torch.Tensor,
        batch_max: torch.Tensor,
    ) -> None:
        """Merge a batch of `nb` tokens given its power sums of (x - shift) [4, N], float64."""
        s1, s2, s3, s4 = sums
        self.batches += 1
        self.positive += positive
        a = s1 / nb  # batch mean minus shift
        m2_b = s2 - nb * a**2
        m3_b = s3 - 3 * a * s2 + 2 * nb * a**3
        m4_b = s4 - 4 * a * s3 + 6 * a**2 * s2 - 3 * nb * a**4
        mean_b = shift.double() + a
        na = self.count
        n = na + nb
        delta = mean_b - self.mean
        m2_a, m3_a = self.m2, self.m3
        self.m4 = (
            self.m4
            + m4_b
            + delta**4 * na * nb * (na * na - na * nb + nb * nb) / n**3
            + 6 * delta**2 * (na * na * m2_b + nb * nb * m2_a) / n**2
            + 4 * delta * (na * m3_b - nb * m3_a) / n
        )
        self.m3 = (
            m3_a
            + m3_b
            + delta**3 * na * nb * (na - nb) / n**2
            + 3 * delta * (na * m2_b - nb * m2_a) / n
        )
        self.m2 = m2_a + m2_b + delta**2 * na * nb / n
        self.mean = self.mean + delta * nb / n
        self.count = n
        self.min = torch.minimum(self.min, batch_min.double())
        self.max = torch.maximum(self.max, batch_max.double())

    def state(self) -> State:
        return {
            "count": self.count,
            "mean": self.mean,
            "m2": self.m2,
            "m3": self.m3,
            "m4": self.m4,
            "positive": self.positive,
            "min": self.min,
            "max": self.max,
        }

    def load(self, state: State) -> None:
        for name, tensor in state.items():
            setattr(self, name, tensor.clone())
        self.batches = int(float(self.count) > 0)


class AdaptiveHistogram:
    """Exact per-neuron histogram whose range grows by doubling the bin width.

    Bin edges sit on integer multiples of a power-of-two width, so a value's bin is
    floor(x / width) - first (exact in float32: dividing by a power of two only shifts the
    exponent), and doubling merges pairs of bins without losing a count. The final histogram is
    exact, with no range guessed up front.
    """

    def __init__(self, n: int, bins: int, device: torch.device) -> None:
        self.bins = bins
        self.counts = torch.zeros((n, bins), dtype=torch.long, device=device)
        self.inverse_width = torch.zeros(n, device=device)  # 1 / width, a power of two
        self.first = torch.zeros(n, dtype=torch.long, device=device)  # low edge / width
        self.offsets = torch.arange(n, device=device) * bins
        self.started = False

    def update(
        self,
        x: torch.Tensor,
        batch_min: torch.Tensor,
        batch_max: torch.Tensor,
        scratch: tuple[torch.Tensor, torch.Tensor],
    ) -> None:
        """x: [M, N], contiguous; scratch: a float and an int32 buffer shaped like x.

        On CPU the flat bin index (neuron * bins + bin) is computed in float32 and counted in
        int32 when every value involved is an integer below 2**24 (exact in float32), which the
        batch's min and max bound without another pass over x; else in int64. The torch path
        (GPU); on CPU the scan's fused kernel counts, after `cover`."""
        self.cover(batch_min, batch_max)
        scaled, index = scratch
        torch.mul(x, self.inverse_width, out=scaled)
        scaled.floor_()
        shift = self.first - self.offsets
        # On a GPU the exactness check would synchronise: take the int64 path there.
        exact_in_float = not x.is_cuda and (
            int(shift.abs().max()) < 2**23
            and float((torch.maximum(batch_min.abs(), batch_max.abs()) * self.inverse_width).max())
            < 2**23
        )
        if exact_in_float:
            scaled -= shift.to(scaled.dtype)
            index.copy_(scaled)
            flat = index.view(-1)
        else:
            flat = scaled.long().sub_(shift).view(-1)
        self.counts += torch.bincount(flat, minlength=self.counts.numel()).view_as(self.counts)

    def _bin_of(self, value: torch.Tensor, inverse_width: torch.Tensor) -> torch.Tensor:
        return torch.floor(value.float() * inverse_width).long()

    def _initialise(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        span = torch.clamp(hi - lo, min=2.0**-20) / self.bins
        self.inverse_width = torch.exp2(-torch.ceil(torch.log2(span))).float()
        self.first = self._bin_of(lo, self.inverse_width)

    def cover(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Make the bins take a batch with these minima and maxima: set the range from the
        first batch, then double the width of every neuron whose range misses the batch, until
        none does.

        Old content is anchored in the lower part of the new bins when growing upwards, and in
        the upper part when growing downwards, so every count lands in a bin.
        """
        if not self.started:
            self._initialise(lo, hi)
            self.started = True
        while True:
            below = self._bin_of(lo, self.inverse_width) < self.first
            above = self._bin_of(hi, self.inverse_width) >= self.first + self.bins
            grow = below | above
            if not bool(grow.any()):
                return
            rows = grow.nonzero().squeeze(1)
            first = self.first[rows]
            aligned = torch.div(first, 2, rounding_mode="floor")  # in units of the new width
            shift = first - 2 * aligned  # 0 or 1: where old bin 0 sits in its new bin
            lift = torch.where(below[rows], self.bins // 2 - 1, 0)
            target = (torch.arange(self.bins, device=rows.device)[None, :] + shift[:, None]) // 2
            merged = torch.zeros_like(self.counts[rows])
            merged.scatter_add_(1, target + lift[:, None], self.counts[rows])
            self.counts[rows] = merged
            self.inverse_width[rows] = self.inverse_width[rows] / 2
            self.first[rows] = aligned - lift

    def histogram(self, neuron: int) -> tuple[float, float, list[int]]:
        counts = self.counts[neuron].tolist()
        nonzero = [i for i, c in enumerate(counts) if c]
        if not nonzero:
            return 0.0, 0.0, []
        first, last = nonzero[0], nonzero[-1]
        width = 1.0 / float(self.inverse_width[neuron])
        low = int(self.first[neuron]) * width
        return low + first * width, low + (last + 1) * width, counts[first : last + 1]

    def state(self) -> State:
        return {"counts": self.counts, "inverse_width": self.inverse_width, "first": self.first}

    def load(self, state: State) -> None:
        for name, tensor in state.items():
            setattr(self, name, tensor.clone())
        self.started = bool((self.inverse_width > 0).all())


@dataclass
class WindowMeta:
    document: str
    offset: int
    token_ids: list[int]
    subset: str | None = None


class Reservoir:
    """Uniform random windows over the whole scan (Algorithm R), the same for every neuron."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.rng = random.Random(seed)
        self.slots: list[int] = []

    def offer(self, window_index: int) -> int | None:
        """The slot this window takes, or None."""
        if window_index < self.size:
            self.slots.append(window_index)
            return window_index
        j = self.rng.randrange(window_index + 1)
        if j < self.size:
            self.slots[j] = window_index
            return j
        return None


# --- merging the states of scans over disjoint shards of one stream ---------------------------
#
# Each function takes the states (as `state()` returns them) of the same accumulator over
# disjoint sets of windows and returns the state of one accumulator that saw them all. Windows
# are named by their global index in the stream, so ties resolve by that index: the window seen
# first wins, as in one process.


def _order_by(primary: torch.Tensor, secondary: torch.Tensor) -> torch.Tensor:
    """Per column, the row order sorting by `primary`, ties by `secondary` (both ascending)."""
    first = secondary.argsort(dim=0, stable=True)
    return first.gather(0, primary.gather(0, first).argsort(dim=0, stable=True))


_INDEX_LIMIT = 2**31 - 1


def _top_by_value_then_index(values: torch.Tensor, index: torch.Tensor, k: int) -> torch.Tensor:
    """Per column, the rows of the k highest values, ties to the lower index (-1 lowest).

    One topk over an int64 key (the float32 value's order-preserving bits, then the index
    reversed) instead of two stable sorts; the sorts remain for indices beyond 2**31 - 1."""
    if int(index.max()) >= _INDEX_LIMIT:
        return _order_by(-values, index)[:k]
    bits = (values.float() + 0.0).view(torch.int32)  # + 0.0: -0.0 ties with 0.0
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long()
    key = (ordered << 32) + (_INDEX_LIMIT - 1 - index)
    return key.topk(k, dim=0).indices


def merge_top(states: list[State], k: int) -> State:
    """The top k of the union: per neuron, one window per content hash (the lowest index), the
    k highest maxima, ties by window index."""
    pool = {name: torch.cat([s[name] for s in states]) for name in states[0]}
    valid = (pool["window"] >= 0) & torch.isfinite(pool["values"])
    last = torch.iinfo(torch.long).max
    window = pool["window"].masked_fill(~valid, last)
    order = _order_by(pool["hash"], window)
    hashes, kept = pool["hash"].gather(0, order), valid.gather(0, order)
    repeat = torch.zeros_like(kept)
    repeat[1:] = (hashes[1:] == hashes[:-1]) & kept[:-1]
    duplicate = torch.zeros_like(kept).scatter_(0, order, repeat)
    values = pool["values"].masked_fill(~valid | duplicate, -math.inf)
    order = _order_by(-values, window)[:k]
    top_values = values.gather(0, order)
    empty = torch.isneginf(top_values)
    acts = pool["acts"].gather(0, order[:, :, None].expand(-1, -1, pool["acts"].shape[2]))
    return {
        "values": top_values,
        "argmax": pool["argmax"].gather(0, order).masked_fill(empty, 0),
        "window": pool["window"].gather(0, order).masked_fill(empty, -1),
        "hash": pool["hash"].gather(0, order).masked_fill(empty, 0),
        "acts": acts.masked_fill(empty[:, :, None], 0.0),
    }


def merge_subset_tops(states: list[dict[str, State]], k: int) -> dict[str, State]:
    """Per subset, merge_top of the ranks that saw it (a rank may have seen no window of it)."""
    names = sorted({name for state in states for name in state})
    return {name: merge_top([s[name] for s in states if name in s], k) for name in names}


def merge_bands(states: list[State], m: int, bins: int) -> State:
    """Bottom-m priorities per bin of the union, on the widest grid of the parts (the grid of
    the largest max, as one process would have reached). Exact: each part holds the bottom m
    of each of its bins, and a bin of the wider grid is a union of bins of a narrower one."""
    exponent = torch.stack([s["exponent"] for s in states]).amax(dim=0)
    pool = {name: torch.cat([s[name] for s in states]) for name in states[0] if name != "exponent"}
    valid = pool["window"] >= 0
    last = torch.iinfo(torch.long).max
    priority = pool["priority"].masked_fill(~valid, EMPTY_PRIORITY)
    order = _order_by(priority, pool["window"].masked_fill(~valid, last))
    sorted_priority = priority.gather(0, order)
    keep = valid.gather(0, order)
    repeat = torch.zeros_like(keep)
    repeat[1:] = sorted_priority[1:] == sorted_priority[:-1]  # the same tokens on two ranks
    keep &= ~repeat
    pool_bin = band_bin(pool["values"].gather(0, order).clamp(min=0), exponent[None, :], bins)
    one_hot = torch.nn.functional.one_hot(pool_bin, bins) * keep[:, :, None]
    rank = one_hot.cumsum(dim=0).gather(2, pool_bin[:, :, None]).squeeze(2) - 1
    keep &= rank < m
    slots, n = m * bins, priority.shape[1]
    target = torch.where(keep, pool_bin * m + rank, slots)  # slots: discarded
    source = torch.full((slots + 1, n), -1, dtype=torch.long, device=priority.device)
    source.scatter_(0, target, order)
    source = source[:slots]
    empty = source < 0
    at = source.clamp(min=0)
    acts = pool["acts"].gather(0, at[:, :, None].expand(-1, -1, pool["acts"].shape[2]))
    return {
        "exponent": exponent,
        "priority": priority.gather(0, at).masked_fill(empty, EMPTY_PRIORITY),
        "values": pool["values"].gather(0, at).masked_fill(empty, 0.0),
        "argmax": pool["argmax"].gather(0, at).masked_fill(empty, 0),
        "window": pool["window"].gather(0, at).masked_fill(empty, -1),
        "acts": acts.masked_fill(empty[:, :, None], 0.0),
    }


def band_bin(values: torch.Tensor, exponent: torch.Tensor, bins: int) -> torch.Tensor:
    """floor(value / 2**exponent) for values >= 0, exact: 1 / w is built from its float32 bits,
    and scaling by a power of two only moves the exponent."""
    inverse = ((127 - exponent.clamp(-126, 126)) << 23).to(torch.int32).view(torch.float32)
    return (values.float() * inverse).floor().long().clamp(0, bins - 1)


def merge_moments(states: list[State]) -> State:
    """Count, mean and M2..M4 of the union by the pairwise update (Chan et al.; Pébay for M3,
    M4), in float64; positive counts add, min and max combine."""
    merged = {name: t.clone() for name, t in states[0].items()}
    for part in states[1:]:
        nb = part["count"]
        if float(nb) == 0:
            continue
        na = merged["count"]
        if float(na) == 0:
            merged = {name: t.clone() for name, t in part.items()}
            continue
        n = na + nb
        delta = part["mean"] - merged["mean"]
        m2_a, m3_a, m2_b, m3_b = merged["m2"], merged["m3"], part["m2"], part["m3"]
        merged["m4"] = (
            merged["m4"]
            + part["m4"]
            + delta**4 * na * nb * (na * na - na * nb + nb * nb) / n**3
            + 6 * delta**2 * (na * na * m2_b + nb * nb * m2_a) / n**2
            + 4 * delta * (na * m3_b - nb * m3_a) / n
        )
        merged["m3"] = (
            m3_a
            + m3_b
            + delta**3 * na * nb * (na - nb) / n**2
            + 3 * delta * (na * m2_b - nb * m2_a) / n
        )
        merged["m2"] = m2_a + m2_b + delta**2 * na * nb / n
        merged["mean"] = merged["mean"] + delta * nb / n
        merged["count"] = n
        merged["positive"] = merged["positive"] + part["positive"]
        merged["min"] = torch.minimum(merged["min"], part["min"])
        merged["max"] = torch.maximum(merged["max"], part["max"])
    return merged


def merge_histograms(states: list[State], bins: int) -> State:
    """Counts of the union: every part's bins brought to the widest part's width (bins sit on
    multiples of a power of two, so a bin of a narrower part lies inside one of the wider),
    doubled further where the union's range needs it, then summed. Exact."""
    parts = [s for s in states if bool((s["inverse_width"] > 0).all())]
    if not parts:
        return {name: t.clone() for name, t in states[0].items()}
    inverse = torch.stack([s["inverse_width"] for s in parts]).amin(dim=0)  # widest
    ratio = [torch.round(s["inverse_width"] / inverse).long() for s in parts]  # powers of two
    positions = torch.arange(bins, device=inverse.device)[None, :]
    absolute = [s["first"][:, None] + positions for s in parts]  # bin in its own width
    big = torch.iinfo(torch.long).max
    while True:
        low = torch.full_like(parts[0]["first"], big)
        high = torch.full_like(parts[0]["first"], -big)
        for part, scale, index in zip(parts, ratio, absolute, strict=True):
            at = torch.div(index, scale[:, None], rounding_mode="floor")
            used = part["counts"] > 0
            low = torch.minimum(low, at.masked_fill(~used, big).amin(dim=1))
            high = torch.maximum(high, at.masked_fill(~used, -big).amax(dim=1))
        grow = (high - low >= bins) & (high >= low)
        if not bool(grow.any()):
            break
        ratio = [r * (1 + grow.long()) for r in ratio]
        inverse = torch.where(grow, inverse / 2, inverse)
    first = torch.where(high >= low, low, 0)
    counts = torch.zeros_like(parts[0]["counts"])
    for part, scale, index in zip(parts, ratio, absolute, strict=True):
        at = torch.div(index, scale[:, None], rounding_mode="floor") - first[:, None]
        counts.scatter_add_(1, at.clamp(0, bins - 1), part["counts"])
    return {"counts": counts, "inverse_width": inverse, "first": first}


class DlaWindows:
    """Per neuron, the k windows with the highest and the k with the lowest direct logit
    attribution of any token (the windows where the neuron most pushes towards, and most
    suppresses, the correct next token), with per-token DLA.

    Two TopWindows, one fed DLA and one fed -DLA, so the exactness, the de-duplication by
    content hash, the tie rule (the window seen first wins) and the merge (merge_top, on each
    half) are TopWindows' own. Tokens without a DLA (a window's last token, padding) are
    passed as NaN and never rank; their stored value is 0. state() gives the bottom half with
    its true sign: its `values` are each window's minimum DLA, ascending.
    """

    def __init__(self, k: int, n: int, ctx: int, device: torch.device) -> None:
        self.top = TopWindows(k, n, ctx, device)
        self.bottom = TopWindows(k, n, ctx, device)

    def update(
        self,
        dla: torch.Tensor,
        window_index: torch.Tensor,
        window_hash: torch.Tensor,
        scratch: torch.Tensor | None = None,
        no_dla: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """dla [B, T, N] (NaN where a token has none). Returns the batch rows kept by any neuron.

        With `scratch` (a contiguous buffer of dla's shape) the work is done in place, with no
        batch-sized allocation: -dla goes to scratch and dla itself is overwritten (the scan's
        reused batch buffers); without, both are fresh copies. `no_dla`: where the caller
        knows them, the tokens without DLA as indices into the B * T token rows: only those rows
        are filled, instead of a pass over the batch looking for NaN."""
        if scratch is None:
            dla, scratch = dla.clone(), torch.empty_like(dla)
        torch.neg(dla, out=scratch)
        kept = []
        for half, ranked in ((self.top, dla), (self.bottom, scratch)):
            if no_dla is None:
                ranked.nan_to_num_(nan=-math.inf, posinf=math.inf, neginf=-math.inf)
            else:
                ranked.view(-1, ranked.shape[2]).index_fill_(0, no_dla, -math.inf)
            kept.append(half.update(ranked, ranked.amax(dim=1), window_index, window_hash))
        return torch.cat(kept)

    def state(self) -> State:
        bottom = self.bottom.state()
        bottom["values"] = -bottom["values"]
        bottom["acts"] = -bottom["acts"]
        return {
            **{f"top_{name}": t for name, t in self.top.state().items()},
            **{f"bottom_{name}": t for name, t in bottom.items()},
        }

    def halves(self) -> tuple[TopWindows, TopWindows]:
        """The two TopWindows (the bottom one holding -DLA), for merging each with merge_top."""
        return self.top, self.bottom

    def load(self, state: State) -> None:
        """Inverse of state()."""
        for prefix, half, sign in (("top_", self.top, 1.0), ("bottom_", self.bottom, -1.0)):
            part = {name[len(prefix) :]: t for name, t in state.items() if name.startswith(prefix)}
            part["values"] = part["values"] * sign
            part["acts"] = part["acts"] * sign
            half.load(part)
