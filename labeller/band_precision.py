"""Per-band precision: does a feature hold across a neuron's whole activation range, or only
at the top? Pure functions shared by `show`, `rank --by band-consistency` and the TUI.

For each activation band (the quantile windows the scan samples, m006), precision is the mean
feature value, scaled to 0..1, at the token each of the band's windows peaks on. The feature
is anything that gives every token a value: a detector (0/1 or graded) or a label's simulation
(0..10, from a score over band windows, `score --on quantiles` or `all`).

A detector is code, fitted to no window, so its precision reads every band window the scan
kept (all splits); a label's simulation exists only on the split it was scored on (valid: one
window a band with the default four). Detector values above 1 (graded: an indentation depth)
count as 1: the feature is present.

A neuron is a "genuinely monosemantic" candidate when the feature holds in every band where it
fires: band consistency is the lowest precision over bands 1 and up. Band 0 (activations near
zero, where the neuron hardly fires) is shown but left out of consistency.
"""

from __future__ import annotations

from collections.abc import Sequence

from labeller.detect.detector import Detector
from labeller.detect.registry import from_definition
from labeller.records import (
    BandPrecision,
    Example,
    ExampleKind,
    Explanation,
    FeatureBands,
    NeuronView,
    Split,
)

SIMULATION_SCALE = 10.0  # simulated activations run 0..10


def band_precision(
    examples: Sequence[Example], values: Sequence[Sequence[float]], scale: float = 1.0
) -> list[BandPrecision]:
    """Per band (lowest first), the mean of values[i][peak of examples[i]] / scale, clipped to
    0..1. `examples` are band windows; `values[i]` is a value per token of examples[i]."""
    if len(examples) != len(values):
        raise ValueError(f"{len(examples)} windows but {len(values)} value lists")
    by_band: dict[int, tuple[float, float, list[float]]] = {}
    for example, token_values in zip(examples, values, strict=True):
        if example.band is None or example.band_low is None or example.band_high is None:
            raise ValueError("band precision needs band windows (kind quantile)")
        if len(token_values) != len(example.activations):
            raise ValueError("a value list does not match its window's tokens")
        entry = by_band.setdefault(example.band, (example.band_low, example.band_high, []))
        entry[2].append(min(1.0, max(0.0, token_values[example.max_index] / scale)))
    return [
        BandPrecision(
            band=band, low=low, high=high, windows=len(found), precision=sum(found) / len(found)
        )
        for band, (low, high, found) in sorted(by_band.items())
    ]


def band_consistency(bands: Sequence[BandPrecision]) -> float | None:
    """The lowest precision over bands 1 and up; None when there is no such band."""
    firing = [b.precision for b in bands if b.band >= 1]
    return min(firing) if firing else None


def simulated_band_precision(
    label: Explanation | None, quantile_examples: Sequence[Example], split: Split = Split.VALID
) -> list[BandPrecision]:
    """Band precision of a label's simulation: its latest score on `split` that simulated band
    windows, the simulated values matched to the neuron's band windows by rank. Empty when the
    label has no such score."""
    if label is None:
        return []
    windows = {e.rank: e for e in quantile_examples}
    for score in sorted(label.scores, key=lambda s: s.created_at, reverse=True):
        if score.split is not split or ExampleKind.QUANTILE not in score.windows.kinds:
            continue
        detail = score.details.get("windows") or []
        pairs = [
            (windows[w["rank"]], w["simulated"])
            for w in detail
            if w.get("kind") == ExampleKind.QUANTILE.value and w["rank"] in windows
        ]
        if pairs:
            return band_precision([e for e, _ in pairs], [v for _, v in pairs], SIMULATION_SCALE)
    return []


def label_bands(view: NeuronView) -> FeatureBands | None:
    """The neuron's label's band precision, from its simulation; None when it has none."""
    label = view.label_explanation()
    bands = simulated_band_precision(label, view.quantile_examples)
    if label is None or not bands:
        return None
    return FeatureBands(
        feature=f"label #{label.id}", bands=bands, consistency=band_consistency(bands)
    )


SHOWN_DETECTORS = 3  # `show` and the JSON give the band precision of this many best detectors


def detector_bands(view: NeuronView, detector: Detector) -> FeatureBands | None:
    """A detector's band precision over every band window of the neuron; None: no bands."""
    windows = view.quantile_examples
    if not windows:
        return None
    bands = band_precision(windows, [detector.values(e.tokens) for e in windows])
    return FeatureBands(
        feature=f"detector:{detector.name}", bands=bands, consistency=band_consistency(bands)
    )


def neuron_band_precision(view: NeuronView, detectors: int = SHOWN_DETECTORS) -> list[FeatureBands]:
    """The label's band precision, then its `detectors` best-scoring detectors' (those that
    can still be made from their stored definition), as `show` gives them."""
    found = [bands for bands in [label_bands(view)] if bands is not None]
    best = [d for d in view.detectors if d.score is not None][:detectors]
    for score in best:
        detector = from_definition(score.name, score.definition)
        bands = detector_bands(view, detector) if detector is not None else None
        if bands is not None:
            found.append(bands)
    return found
