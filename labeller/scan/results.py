"""A finished scan's state as what the catalogue stores: per layer, blocks of neurons whose
examples are arrays (`ExampleColumns`).

Everything per example is done with array operations over a block of neurons: building the
rows one example at a time in Python took longer than scanning them (tens of millions of
examples for a large model). The neurons' own rows are built from columns too: a record per
neuron (and per output token) cost a quarter of a scan's write.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from labeller.catalogue.rows import (
    FLOAT16_MAX,
    KIND_CODES,
    SPLIT_CODES,
    ExampleColumns,
    NeuronBlock,
    histogram_to_db,
    output_token_columns_to_db,
    reals_to_db,
    related_to_db,
)
from labeller.model.loading import LoadedModel
from labeller.model.weights import layer_weight_facts
from labeller.records import (
    BANDS,
    ExampleKind,
    RelatedNeuron,
    Split,
    band_edges,
    quantile_split,
    random_split,
    top_split,
)
from labeller.scan.accumulators import AdaptiveHistogram, WindowMeta

if TYPE_CHECKING:
    from labeller.scan.runner import LayerState

BLOCK_NEURONS = 1024  # neurons packed at a time: bounds the copies of their windows' values
Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class StoredWeightFacts:
    """A layer's weight facts as its neurons' rows store them: the cosines, and each neuron's
    output tokens as JSON. They are the model's alone, so a scan makes them while its corpus
    opens (`runner.run_scan`)."""

    cosine: list[float]
    positive_tokens: list[str]
    negative_tokens: list[str]


def stored_weight_facts(model: LoadedModel, layer: int) -> StoredWeightFacts:
    facts = layer_weight_facts(model, layer)
    return StoredWeightFacts(
        facts.cosine,
        output_token_columns_to_db(facts.positive_tokens, facts.positive_weights),
        output_token_columns_to_db(facts.negative_tokens, facts.negative_weights),
    )


def _split_codes(split: Callable[[int], Split], size: int) -> np.ndarray:
    """The split code of every place 0..size-1 under a split rule (`top_split`, ...)."""
    return np.array([SPLIT_CODES[split(place)] for place in range(size)], dtype=np.uint8)


class WindowLengths:
    """Each kept window's number of tokens, looked up for arrays of window indices (-1, an
    empty slot: 0)."""

    def __init__(self, windows: Mapping[int, WindowMeta]) -> None:
        self.keys = np.array(sorted(windows), dtype=np.int64)
        self.lengths = np.array([len(windows[k].token_ids) for k in self.keys.tolist()])

    def __call__(self, index: np.ndarray) -> np.ndarray:
        if not self.keys.size:
            if (index >= 0).any():
                raise KeyError(int(index.max()))
            return np.zeros(index.shape, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.keys, index), self.keys.size - 1)
        known = self.keys[at] == index
        if (~known & (index >= 0)).any():
            raise KeyError(int(index[~known & (index >= 0)][0]))  # a slot names a window not kept
        return np.where(known, self.lengths[at], 0)


def layer_blocks(
    layer: int,
    state: LayerState,
    *,
    reservoir: list[int],
    lengths: WindowLengths,
    weights: StoredWeightFacts,
    related: list[list[RelatedNeuron]] | None,
) -> Iterator[NeuronBlock]:
    """One layer's neurons with their statistics and examples, in blocks: top windows, the
    subsets' top windows, random windows, band windows, DLA windows (the stored order)."""
    top = _numpy(state.top.state())
    subsets = (
        [_numpy(part) for part in state.subset_top.state().values()]
        if state.subset_top is not None
        else []
    )
    random_acts = state.random_acts[: len(reservoir)].cpu().numpy()
    bands = _numpy(state.bands.state()) if state.bands is not None else None
    dla = _numpy(state.dla.state()) if state.dla is not None else None
    moments = _numpy(state.moments.state())
    stats = _layer_stats(moments, state.histogram)
    maxima = moments["max"].tolist()
    related_json = None if related is None else [related_to_db(r) for r in related]
    for start in range(0, state.n, BLOCK_NEURONS):
        cut = slice(start, min(start + BLOCK_NEURONS, state.n))
        parts = [_ranked(top, cut, ExampleKind.TOP, lengths)]
        taken = np.zeros(cut.stop - cut.start, dtype=np.int64)
        for part in subsets:  # ranked on across subsets, split within each
            parts.append(_ranked(part, cut, ExampleKind.SUBSET_TOP, lengths, first_rank=taken))
            taken = taken + (parts[-1].window_key >= 0).sum(axis=1)
        parts.append(_random(random_acts[:, :, cut], reservoir, lengths))
        if bands is not None:
            parts.append(_banded(bands, cut, maxima[cut], state.bands.m, lengths))  # type: ignore[union-attr]
        if dla is not None:
            parts.append(_ranked(dla, cut, ExampleKind.DLA_TOP, lengths, prefix="top_"))
            parts.append(_ranked(dla, cut, ExampleKind.DLA_BOTTOM, lengths, prefix="bottom_"))
        facts = list(
            zip(
                *(column[cut] for column in stats),
                weights.cosine[cut],
                weights.positive_tokens[cut],
                weights.negative_tokens[cut],
                [None] * (cut.stop - cut.start) if related_json is None else related_json[cut],
                strict=True,
            )
        )
        keys = [(layer, n) for n in range(cut.start, cut.stop)]
        yield NeuronBlock(keys, facts, _joined(parts))


def _columns(
    window_key: np.ndarray,
    kind: ExampleKind,
    rank: np.ndarray,
    split: np.ndarray,
    maxima: np.ndarray,
    max_index: np.ndarray,
    activations: np.ndarray,
    lengths: WindowLengths,
    band: np.ndarray | None = None,
    edges: tuple[np.ndarray, np.ndarray] | None = None,
) -> ExampleColumns:
    shape = window_key.shape
    none = np.full(shape, math.nan)
    return ExampleColumns(
        window_key=window_key,
        kind=np.full(shape, KIND_CODES[kind], dtype=np.uint8),
        rank=rank,
        split=split,
        max_activation=maxima.astype(np.float64),
        max_index=max_index,
        band=np.full(shape, -1) if band is None else band,
        band_low=none if edges is None else edges[0],
        band_high=none if edges is None else edges[1],
        length=lengths(window_key),
        activations=activations,
    )


def _ranked(
    state: Arrays,
    cut: slice,
    kind: ExampleKind,
    lengths: WindowLengths,
    *,
    first_rank: np.ndarray | None = None,
    prefix: str = "",
) -> ExampleColumns:
    """Top windows (of the corpus, a subset, or by DLA) as TopWindows.state ranks them: the
    filled slots, ranked from `first_rank`, split by their place among them."""
    values = state[f"{prefix}values"][:, cut].T
    window = state[f"{prefix}window"][:, cut].T
    held = (window >= 0) & np.isfinite(values)
    place = np.cumsum(held, axis=1) - 1
    return _columns(
        window_key=np.where(held, window, -1),
        kind=kind,
        rank=place + (0 if first_rank is None else first_rank[:, None]),
        split=_split_codes(top_split, values.shape[1])[np.maximum(place, 0)],
        maxima=values,
        max_index=state[f"{prefix}argmax"][:, cut].T,
        activations=state[f"{prefix}acts"][:, cut, :].transpose(1, 0, 2),
        lengths=lengths,
    )


def _random(acts: np.ndarray, reservoir: list[int], lengths: WindowLengths) -> ExampleColumns:
    """The random windows (the same for every neuron), `acts` [slots, ctx, neurons]: each
    window's max over its own tokens, taken in that layout, the neurons side by side (over
    their transposes it took 11 ms a 1,024-neuron layer, against 7.5 ms), by torch (the first
    of equal maxima, as numpy's argmax: 2.4 ms against numpy's 5.4 ms)."""
    slots, ctx, neurons = acts.shape
    window = np.array(reservoir, dtype=np.int64)
    outside = torch.from_numpy(np.arange(ctx)[None, :] >= lengths(window)[:, None])
    values = torch.from_numpy(acts)
    if ctx:
        maxima, max_index = values.masked_fill(outside[:, :, None], -math.inf).max(dim=1)
    else:
        maxima = torch.full((slots, neurons), -math.inf)
        max_index = torch.zeros((slots, neurons), dtype=torch.long)
    keys = np.broadcast_to(window, (neurons, slots))
    ranks = np.broadcast_to(np.arange(slots), keys.shape)
    return _columns(
        window_key=keys,
        kind=ExampleKind.RANDOM,
        rank=ranks,
        split=_split_codes(random_split, slots)[ranks],
        maxima=maxima.numpy().T,
        max_index=max_index.numpy().T,
        activations=_as_stored(values.permute(2, 0, 1)),
        lengths=lengths,
    )


def _banded(
    state: Arrays, cut: slice, maxima: list[float], m: int, lengths: WindowLengths
) -> ExampleColumns:
    """The band samples, band by band: band i is [edges[i], edges[i+1]) of the neuron's
    `band_edges` (the top one closed at its max); a window's split is its place in its band's
    sample, interleaved like top windows."""
    window = state["window"][:, cut].T
    band = np.broadcast_to(np.arange(window.shape[1]) // m, window.shape)
    edges = np.full((window.shape[0], BANDS + 2), math.nan)
    for n, top in enumerate(maxima):
        found = band_edges(top)
        edges[n, : len(found)] = found
    high = np.take_along_axis(edges, band + 1, axis=1)
    held = (window >= 0) & ~np.isnan(high)  # a window above the top edge cannot happen
    at_band = np.cumsum(held.reshape(len(maxima), -1, m), axis=2).reshape(held.shape) - 1
    return _columns(
        window_key=np.where(held, window, -1),
        kind=ExampleKind.QUANTILE,
        rank=np.cumsum(held, axis=1) - 1,
        split=_split_codes(quantile_split, m)[np.maximum(at_band, 0)],
        maxima=state["values"][:, cut].T,
        max_index=state["argmax"][:, cut].T,
        activations=state["acts"][:, cut, :].transpose(1, 0, 2),
        lengths=lengths,
        band=band,
        edges=(np.take_along_axis(edges, band, axis=1), high),
    )


def _joined(parts: list[ExampleColumns]) -> ExampleColumns:
    """The parts' slots side by side, in order (their windows padded to the longest with
    zeros), each part's values copied once."""
    ctx = max(part.activations.shape[2] for part in parts)
    neurons = parts[0].activations.shape[0]
    slots = sum(part.activations.shape[1] for part in parts)
    dtype = np.result_type(*(part.activations for part in parts))
    activations = np.empty((neurons, slots, ctx), dtype=dtype)
    start = 0
    for part in parts:
        _, count, width = part.activations.shape
        activations[:, start : start + count, :width] = part.activations
        activations[:, start : start + count, width:] = 0
        start += count
    fields = {
        name: np.concatenate([getattr(part, name) for part in parts], axis=1)
        for name in ExampleColumns.__dataclass_fields__
        if name != "activations"
    }
    return ExampleColumns(**fields, activations=activations)


def _layer_stats(moments: Arrays, histogram: AdaptiveHistogram) -> list[list[Any]]:
    """Each neuron's statistics as stored, column by column (FACT_COLUMNS from max to the
    histogram), computed as `NeuronStats` defines them: skewness and kurtosis None for a
    constant neuron."""
    count = float(moments["count"])
    m2, m3, m4 = (moments[name].astype(np.float64) for name in ("m2", "m3", "m4"))
    constant = m2 <= 1e-12 * max(count, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = m2 / count if count else np.zeros_like(m2)
        skewness = math.sqrt(count) * m3 / m2**1.5
        kurtosis = count * m4 / (m2 * m2) - 3.0
    density = moments["positive"].astype(np.float64) / count if count else np.zeros_like(m2)

    def absent_if_constant(values: np.ndarray) -> list[float | str | None]:
        stored = reals_to_db(values.tolist())
        return [None if c else v for v, c in zip(stored, constant.tolist(), strict=True)]

    return [
        reals_to_db(moments["max"].tolist()),
        reals_to_db(moments["min"].tolist()),
        reals_to_db(moments["mean"].tolist()),
        reals_to_db(np.sqrt(np.maximum(variance, 0.0)).tolist()),
        reals_to_db(density.tolist()),
        absent_if_constant(skewness),
        absent_if_constant(kurtosis),
        [int(count)] * m2.shape[0],
        _histograms(histogram),
    ]


def _histograms(histogram: AdaptiveHistogram) -> list[str]:
    """Each neuron's histogram as stored, trimmed to its first and last non-empty bins."""
    counts = histogram.counts.cpu().numpy()
    filled = counts > 0
    first = filled.argmax(axis=1).tolist()
    last = (counts.shape[1] - 1 - filled[:, ::-1].argmax(axis=1)).tolist()
    inverse_width = histogram.inverse_width.cpu().tolist()
    origin = histogram.first.cpu().tolist()
    found = []
    nonempty = np.any(filled, axis=1).tolist()
    for n, any_filled in enumerate(nonempty):
        if not any_filled:
            found.append(histogram_to_db(0.0, 0.0, []))
            continue
        width = 1.0 / float(inverse_width[n])
        low = int(origin[n]) * width
        found.append(
            histogram_to_db(
                low + first[n] * width,
                low + (last[n] + 1) * width,
                counts[n, first[n] : last[n] + 1].tolist(),
            )
        )
    return found


def _numpy(state: dict[str, torch.Tensor]) -> Arrays:
    """A state's tensors as arrays, its per-token activations as stored (`_as_stored`), once
    for the whole layer."""
    return {
        name: _as_stored(t) if name.endswith("acts") else t.cpu().numpy()
        for name, t in state.items()
    }


def _as_stored(values: torch.Tensor) -> np.ndarray:
    """Per-token activations as the catalogue stores them (`to_float16`), converted by torch:
    the same bits as numpy's conversion (round to nearest even, subnormals kept) in under half
    its time on a scan's tens of millions of values, and half the bytes to move after."""
    return values.clamp(-FLOAT16_MAX, FLOAT16_MAX).half().cpu().numpy()
