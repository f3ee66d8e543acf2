"""Ranking neurons by measures read off each neuron's whole view (its subsets, its bands), not
off a stored column: `rank --by illusion` and `rank --by band-consistency`.

Each neuron's view is read once; the measures are the pure functions of `labeller.subsets` and
`labeller.band_precision`. Neurons without the measure (no subsets, no band scores) are left out.
"""

from __future__ import annotations

from collections.abc import Callable

from labeller.band_precision import detector_bands, label_bands
from labeller.catalogue import Catalogue
from labeller.detect.detector import Detector
from labeller.detect.registry import resolve
from labeller.errors import UserError
from labeller.records import FeatureBands, MeasureRow, NeuronView
from labeller.subsets import illusion, subset_summaries

Measure = Callable[[NeuronView], tuple[float, str] | None]


def illusion_measure(view: NeuronView) -> tuple[float, str] | None:
    found = illusion(view)
    if found is None:
        return None
    peaks = {s.subset: s.peak_tokens[:3] for s in subset_summaries(view)}
    sides = " vs ".join(f"{name} ({' '.join(peaks.get(name, []))})" for name in found.pair)
    gap = "n/a" if found.score_gap is None else f"{found.score_gap:.2f}"
    return found.measure, (f"{sides}: divergence {found.example_divergence:.2f}, score gap {gap}")


def _consistency(bands: FeatureBands | None) -> tuple[float, str] | None:
    if bands is None or bands.consistency is None:
        return None
    per_band = " ".join(f"{b.precision:.2f}" for b in bands.bands)
    return bands.consistency, f"{bands.feature} per band: {per_band}"


def band_consistency_measure(view: NeuronView) -> tuple[float, str] | None:
    return _consistency(label_bands(view))


def detector_consistency_measure(detector: Detector) -> Measure:
    return lambda view: _consistency(detector_bands(view, detector))


def measure_named(name: str) -> Measure:
    """`illusion`, `band-consistency` (the label's) or `band-consistency:DETECTOR`."""
    if name == "illusion":
        return illusion_measure
    if name == "band-consistency":
        return band_consistency_measure
    found = resolve([name.removeprefix("band-consistency:")], [])
    if len(found) != 1:
        raise UserError(f"--by {name}: name one detector, e.g. band-consistency:number")
    return detector_consistency_measure(found[0])


def rank_by_measure(
    catalogue: Catalogue,
    model_name: str | None,
    measure: str,
    layers: list[int] | None = None,
    limit: int | None = None,
) -> list[MeasureRow]:
    """The neurons with the measure, highest first (ties by layer and neuron)."""
    compute = measure_named(measure)
    found = []
    for ref in catalogue.neuron_refs(model_name, layers, None):
        view = catalogue.neuron_view(ref.model, ref.layer, ref.neuron)
        result = compute(view)
        if result is None:
            continue
        label = view.label_explanation()
        found.append(
            MeasureRow(
                layer=ref.layer,
                neuron=ref.neuron,
                value=result[0],
                detail=result[1],
                label=None if label is None else label.text,
            )
        )
    found.sort(key=lambda r: (-r.value, r.layer, r.neuron))
    return found[:limit]
