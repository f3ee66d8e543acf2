"""Streaming per-neuron state for one layer: top-k windows, moments, histogram, random windows.

Memory is O(neurons x k x ctx) whatever the corpus size. Every update is a handful of vectorised
tensor ops on the batch, so the scan runs close to the speed of the bare forward pass.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

State = dict[str, torch.Tensor]


class TopWindows:
    """The k windows with the highest maximum activation, per neuron, with per-token values.

    Windows are compared by content hash, so the same text never fills two slots of a neuron.
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
        mask: torch.Tensor,
        window_index: torch.Tensor,
        window_hash: torch.Tensor,
    ) -> torch.Tensor:
        """Merge a batch ([B, T, N] activations); returns the batch rows that entered any top-k."""
        width = acts.shape[1]
        padded = acts if bool(mask.all()) else acts.masked_fill(~mask[:, :, None], -math.inf)
        window_max, window_argmax = padded.max(dim=1)
        same = window_hash[:, None] == window_hash[None, :]
        repeated_in_batch = torch.tril(same, diagonal=-1).any(dim=1)
        window_max[repeated_in_batch] = -math.inf
        candidate = window_max > self.values[-1][None, :]
        cols = candidate.any(dim=0).nonzero().squeeze(1)
        if cols.numel() == 0:
            return torch.zeros(0, dtype=torch.long, device=acts.device)

        cand_max = window_max[:, cols].masked_fill(~candidate[:, cols], -math.inf)
        already_kept = (window_hash[:, None, None] == self.hash[None, :, cols]).any(dim=1)
        cand_max = cand_max.masked_fill(already_kept, -math.inf)
        merged = torch.cat([self.values[:, cols], cand_max], dim=0)
        top_values, top_index = merged.topk(self.k, dim=0)
        from_old = top_index < self.k
        old_i = top_index.clamp(max=self.k - 1)
        new_b = (top_index - self.k).clamp(min=0)

        def pick(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
            return torch.where(from_old, old[:, cols].gather(0, old_i), new)

        self.argmax[:, cols] = pick(self.argmax, window_argmax[:, cols].gather(0, new_b))
        self.window[:, cols] = pick(self.window, window_index[new_b])
        self.hash[:, cols] = pick(self.hash, window_hash[new_b])
        old_acts = self.acts[:, cols, :].gather(
            0, old_i[:, :, None].expand(-1, -1, self.acts.shape[2])
        )
        new_acts = torch.zeros_like(old_acts)
        new_acts[:, :, :width] = acts[new_b, :, cols[None, :]]
        self.acts[:, cols, :] = torch.where(from_old[:, :, None], old_acts, new_acts)
        self.values[:, cols] = top_values
        return torch.unique(new_b[~from_old & torch.isfinite(top_values)])

    def state(self) -> State:
        return {
            "values": self.values,
            "argmax": self.argmax,
            "window": self.window,
            "hash": self.hash,
            "acts": self.acts,
        }

    def load(self, state: State) -> None:
        for name, tensor in state.items():
            getattr(self, name).copy_(tensor)


class Moments:
    """Count, mean and central moments M2..M4 per neuron, merged exactly batch by batch (Pébay)."""

    def __init__(self, n: int, device: torch.device) -> None:
        zeros = lambda: torch.zeros(n, dtype=torch.float64, device=device)  # noqa: E731
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.mean, self.m2, self.m3, self.m4 = zeros(), zeros(), zeros(), zeros()
        self.positive = torch.zeros(n, dtype=torch.float64, device=device)
        self.min = torch.full((n,), math.inf, dtype=torch.float64, device=device)
        self.max = torch.full((n,), -math.inf, dtype=torch.float64, device=device)

    def update(self, x: torch.Tensor, batch_min: torch.Tensor, batch_max: torch.Tensor) -> None:
        """x: [tokens, N] activations of real (unpadded) tokens."""
        nb = float(x.shape[0])
        mean_b = x.mean(dim=0)
        d = x - mean_b
        d2 = d * d
        m2_b = d2.sum(dim=0).double()
        m3_b = (d2 * d).sum(dim=0).double()
        m4_b = (d2 * d2).sum(dim=0).double()
        mean_b = mean_b.double()
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
        self.positive += (x > 0).sum(dim=0).double()
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

    def update(self, x: torch.Tensor, batch_min: torch.Tensor, batch_max: torch.Tensor) -> None:
        if not bool((self.inverse_width > 0).all()):
            self._initialise(batch_min, batch_max)
        self._cover(batch_min, batch_max)
        index = torch.floor(x * self.inverse_width).long()
        index -= self.first - self.offsets
        self.counts += torch.bincount(index.flatten(), minlength=self.counts.numel()).view_as(
            self.counts
        )

    def _bin_of(self, value: torch.Tensor, inverse_width: torch.Tensor) -> torch.Tensor:
        return torch.floor(value.float() * inverse_width).long()

    def _initialise(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        span = torch.clamp(hi - lo, min=2.0**-20) / self.bins
        self.inverse_width = torch.exp2(-torch.ceil(torch.log2(span))).float()
        self.first = self._bin_of(lo, self.inverse_width)

    def _cover(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Double the width of every neuron whose range misses the batch, until none does.

        Old content is anchored in the lower part of the new bins when growing upwards, and in
        the upper part when growing downwards, so every count lands in a bin.
        """
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


@dataclass
class WindowMeta:
    document: str
    offset: int
    token_ids: list[int]


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
