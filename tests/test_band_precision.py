"""Per-band precision on hand-made band windows: from per-token values (a detector's or a
simulation's), and from a label's stored simulation."""

from __future__ import annotations

import pytest

from labeller.band_precision import band_consistency, band_precision, simulated_band_precision
from labeller.records import (
    Example,
    ExampleKind,
    Explanation,
    LabelStatus,
    Score,
    ScoreMethod,
    ScoreWindows,
    Split,
)


def band_window(band: int, rank: int, peak: int) -> Example:
    activations = [0.1, 0.1, 0.1]
    activations[peak] = band + 0.5
    return Example(
        kind=ExampleKind.QUANTILE, rank=rank, split=Split.VALID, tokens=["x", "y", "z"],
        activations=activations, max_index=peak, max_activation=band + 0.5, document="d",
        offset=0, band=band, band_low=float(band), band_high=band + 1.0,
    )  # fmt: skip


def test_precision_reads_the_value_at_each_windows_peak():
    windows = [
        band_window(0, 0, 0),
        band_window(0, 1, 1),
        band_window(2, 2, 2),
        band_window(2, 3, 0),
    ]
    values = [[0, 1, 1], [0, 1, 0], [1, 1, 1], [0, 1, 1]]  # the feature at peak: 0, 1, 1, 0
    bands = band_precision(windows, values)
    assert [(b.band, b.low, b.high, b.windows, b.precision) for b in bands] == [
        (0, 0.0, 1.0, 2, 0.5),
        (2, 2.0, 3.0, 2, 0.5),
    ]


def test_graded_values_are_scaled_and_clipped():
    windows = [band_window(1, 0, 0), band_window(1, 1, 0)]
    bands = band_precision(windows, [[5, 0, 0], [15, 0, 0]], scale=10)
    assert bands[0].precision == pytest.approx((0.5 + 1.0) / 2)


def test_consistency_is_the_weakest_firing_band():
    windows = [band_window(b, b, 0) for b in range(4)]
    bands = band_precision(windows, [[0, 0, 0], [1, 0, 0], [0.5, 0, 0], [1, 0, 0]])
    assert band_consistency(bands) == 0.5  # band 0 (hardly firing) is left out
    assert band_consistency(bands[:1]) is None


def test_mismatched_input_is_an_error():
    with pytest.raises(ValueError, match="windows but"):
        band_precision([band_window(0, 0, 0)], [])
    with pytest.raises(ValueError, match="does not match"):
        band_precision([band_window(0, 0, 0)], [[1, 0]])
    top = band_window(0, 0, 0).model_copy(update={"kind": ExampleKind.TOP, "band": None})
    with pytest.raises(ValueError, match="band windows"):
        band_precision([top], [[1, 0, 0]])


def test_a_labels_simulation_gives_its_band_precision():
    windows = [band_window(1, 0, 0), band_window(1, 1, 2), band_window(2, 2, 1)]
    detail = [
        {"kind": "quantile", "rank": 0, "band": 1, "simulated": [10, 0, 0]},
        {"kind": "quantile", "rank": 1, "band": 1, "simulated": [10, 0, 0]},  # misses the peak
        {"kind": "quantile", "rank": 2, "band": 2, "simulated": [0, 8, 0]},
    ]
    label = Explanation(
        id=3, text="x", source="human", status=LabelStatus.PROPOSED,
        scores=[
            Score(method=ScoreMethod.TOP_AND_RANDOM, split=Split.VALID, score=0.5),
            Score(
                method=ScoreMethod.QUANTILES, split=Split.VALID, score=0.4,
                windows=ScoreWindows.QUANTILES, details={"windows": detail},
            ),
        ],
    )  # fmt: skip
    bands = simulated_band_precision(label, windows)
    assert [(b.band, b.precision) for b in bands] == [(1, 0.5), (2, pytest.approx(0.8))]
    assert simulated_band_precision(label, windows, Split.TEST) == []
    assert simulated_band_precision(None, windows) == []


def test_a_detectors_band_precision_reads_every_band_window():
    from labeller.band_precision import detector_bands
    from labeller.detect.registry import parse_regex
    from labeller.records import Histogram, NeuronStats, NeuronView

    def digit_window(band: int, rank: int, peak_token: str) -> Example:
        window = band_window(band, rank, 1)
        return window.model_copy(update={"tokens": ["a", peak_token, "b"], "split": Split.TRAIN})

    windows = [digit_window(1, 0, "7"), digit_window(1, 1, "x"), digit_window(2, 2, "42")]
    stats = NeuronStats(
        max=3, min=0, mean=0, std=1, density=0.5, skewness=0, kurtosis=0, tokens=9,
        histogram=Histogram(low=0, high=3, counts=[1]),
    )  # fmt: skip
    view = NeuronView(
        model="m", layer=0, neuron=0, scan_id=1, stats=stats, weights=None, top_examples=[],
        random_examples=[], quantile_examples=windows, explanations=[],
    )  # fmt: skip
    bands = detector_bands(view, parse_regex("digits=[0-9]+"))
    assert bands is not None and bands.feature == "detector:digits"
    assert [(b.band, b.windows, b.precision) for b in bands.bands] == [(1, 2, 0.5), (2, 1, 1.0)]
    assert bands.consistency == 0.5
    assert (
        detector_bands(view.model_copy(update={"quantile_examples": []}), parse_regex("d=1"))
        is None
    )
