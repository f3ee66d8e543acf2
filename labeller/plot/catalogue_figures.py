"""`labeller plot`: figures of one neuron or one layer, read from the catalogue.

A figure whose data the catalogue does not hold is skipped with a note saying why, never drawn
from a stand-in."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from labeller.band_precision import detector_bands, label_bands, neuron_band_precision
from labeller.catalogue import Catalogue
from labeller.catalogue.browse import neuron_summaries
from labeller.detect.detector import Detector
from labeller.errors import UserError
from labeller.plot import pyplot, save
from labeller.records import (
    Example,
    ExampleKind,
    FeatureBands,
    NeuronView,
    NullControl,
    Split,
    neuron_name,
)

if TYPE_CHECKING:
    from labeller.model.loading import LoadedModel

SCORE_SPLIT = Split.VALID


@dataclass
class Plotted:
    paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def neuron_figures(
    view: NeuronView,
    out: Path,
    dpi: int,
    formats: tuple[str, ...],
    detectors: Sequence[Detector] | None = None,
    dla: DlaSeries | None = None,
) -> Plotted:
    """The neuron's activation histogram (the scan's exact stored one), the per-band
    precision of its label and of `detectors` (default: its best stored detectors, as `show`
    gives them) and, given `dla` (see `dla_series`), DLA against activation per token."""
    plotted = Plotted()
    name = neuron_name(view.layer, view.neuron)
    histogram = view.stats.histogram
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    n = len(histogram.counts)
    width = (histogram.high - histogram.low) / n if n else 0.0
    edges = [histogram.low + i * width for i in range(n)]
    ax.bar(edges, histogram.counts, width=width or 1.0, align="edge")
    ax.set_yscale("log")
    ax.set_xlabel("activation")
    ax.set_ylabel("tokens")
    ax.set_title(
        f"{view.model} {name}: activations over {view.stats.tokens:,} scanned tokens "
        f"(excess kurtosis {_fmt(view.stats.kurtosis)})",
        fontsize="medium",
    )
    stem = out / f"{_neuron_stem(view)}_histogram"
    plotted.paths += save(fig, stem, dpi, formats)
    _band_figure(view, band_series(view, detectors), out, dpi, formats, plotted)
    if dla is None:
        plotted.notes.append(f"{name}: no DLA vs activation figure (--no-dla: no model loaded)")
    else:
        _dla_figure(view, dla, out, dpi, formats, plotted)
    return plotted


def band_series(
    view: NeuronView, detectors: Sequence[Detector] | None = None
) -> list[FeatureBands]:
    """What the per-band precision figure draws: the label's band precision, then each of
    `detectors`' (None: the neuron's best stored detectors, as `show` gives them)."""
    if detectors is None:
        return neuron_band_precision(view)
    found = [label_bands(view), *(detector_bands(view, d) for d in detectors)]
    return [bands for bands in found if bands is not None]


def _band_figure(
    view: NeuronView,
    series: list[FeatureBands],
    out: Path,
    dpi: int,
    formats: tuple[str, ...],
    plotted: Plotted,
) -> None:
    """One panel per feature: a bar per activation band (its edges under it, its window count
    over it), or a note when the neuron has no band windows or nothing scored on them."""
    name = neuron_name(view.layer, view.neuron)
    if not view.quantile_examples:
        plotted.notes.append(
            f"{name}: no per-band precision figure: the scan kept no activation-band windows "
            "(scan with --band-windows N)"
        )
        return
    if not series:
        plotted.notes.append(
            f"{name}: no per-band precision figure: no label scored on band windows (labeller "
            "score --on quantiles) and no detector (labeller detect, or plot --detector NAME)"
        )
        return
    if label_bands(view) is None:
        plotted.notes.append(
            f"{name}: per-band precision without the label's: it has no score on band windows "
            "(labeller score --on quantiles)"
        )
    plt = pyplot()
    fig, axes = plt.subplots(len(series), 1, figsize=(6, 1.2 + 1.9 * len(series)), squeeze=False)
    for ax, bands in zip(axes[:, 0], series, strict=True):
        positions = [b.band for b in bands.bands]
        bars = ax.bar(positions, [b.precision for b in bands.bands], width=0.7)
        ax.bar_label(bars, labels=[f"{b.windows} win" for b in bands.bands], fontsize="x-small")
        ax.set_xticks(positions, [f"[{b.low:.2g}, {b.high:.2g}]" for b in bands.bands])
        ax.tick_params(axis="x", labelsize="x-small")
        ax.set_ylim(0, 1.15)
        ax.set_ylabel("precision")
        consistency = "n/a" if bands.consistency is None else f"{bands.consistency:.2f}"
        read = (
            "every band window" if bands.feature.startswith("detector:") else "valid band windows"
        )
        ax.set_title(
            f"{bands.feature} on {read} (band consistency {consistency})",
            fontsize="small",
            loc="left",
        )
    axes[-1, 0].set_xlabel("activation band (edges)")
    fig.suptitle(f"{view.model} {name}: precision per activation band", fontsize="medium")
    plotted.paths += save(fig, out / f"{_neuron_stem(view)}_band_precision", dpi, formats)


@dataclass
class DlaSeries:
    """What the DLA vs activation figure draws: a point per token that has a next token in
    its window, with the kind of window it came from."""

    activations: list[float] = field(default_factory=list)
    dla: list[float] = field(default_factory=list)
    kinds: list[ExampleKind] = field(default_factory=list)
    scanned_dla: bool = False  # the scan kept DLA windows (--dla)

    def correlation(self) -> float | None:
        """Pearson r of DLA against activation; None when either is constant or too short."""
        if len(self.dla) < 2 or len(set(self.dla)) < 2 or len(set(self.activations)) < 2:
            return None
        return statistics.correlation(self.activations, self.dla)


DLA_SERIES_KINDS = (
    ExampleKind.TOP,
    ExampleKind.RANDOM,
    ExampleKind.DLA_TOP,
    ExampleKind.DLA_BOTTOM,
)


def dla_series(
    view: NeuronView, token_ids: Mapping[tuple[str, int], list[int]], model: LoadedModel
) -> DlaSeries:
    """Activation and DLA per token over the neuron's top, random and DLA windows (each window
    once). A window's stored values are read from the catalogue (activations for top and
    random, DLA for the DLA kinds) and the other one is computed by the model on the window's
    exact tokens; a window's last token has no next token in it and no point."""
    from labeller.model.dla import window_dla

    series = DlaSeries(scanned_dla=bool(view.dla_top_examples or view.dla_bottom_examples))
    windows: list[Example] = [
        *view.top_examples,
        *view.random_examples,
        *view.dla_top_examples,
        *view.dla_bottom_examples,
    ]
    seen: set[tuple[str, int]] = set()
    for example in windows:
        if (example.document, example.offset) in seen:
            continue
        seen.add((example.document, example.offset))
        ids = token_ids.get((example.kind.value, example.rank))
        if ids is None:
            raise UserError(
                f"{neuron_name(view.layer, view.neuron)}: no token ids stored for its "
                f"{example.kind.value} window {example.rank}: rescan, or plot with --no-dla"
            )
        acts, dla = window_dla(model, ids, view.layer, view.neuron)
        if example.kind in (ExampleKind.DLA_TOP, ExampleKind.DLA_BOTTOM):
            dla = example.activations
        else:
            acts = example.activations
        series.activations += acts[:-1]
        series.dla += dla[:-1]
        series.kinds += [example.kind] * (len(acts) - 1)
    return series


def _dla_figure(
    view: NeuronView,
    series: DlaSeries,
    out: Path,
    dpi: int,
    formats: tuple[str, ...],
    plotted: Plotted,
) -> None:
    """A point per token, coloured by the kind of window it came from; the correlation in the
    title. Notes what the DLA was computed from when the scan kept no DLA windows."""
    name = neuron_name(view.layer, view.neuron)
    if not series.dla:
        plotted.notes.append(f"{name}: no DLA vs activation figure: the neuron has no windows")
        return
    if not series.scanned_dla:
        plotted.notes.append(
            f"{name}: the scan had no --dla: DLA vs activation computed by the model over the "
            "stored top and random windows only (no DLA windows to add)"
        )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in DLA_SERIES_KINDS:
        points = [
            (a, d)
            for a, d, k in zip(series.activations, series.dla, series.kinds, strict=True)
            if k is kind
        ]
        if points:
            ax.scatter(
                [a for a, _ in points],
                [d for _, d in points],
                s=7,
                alpha=0.6,
                label=f"{kind.value} windows ({len(points)} tokens)",
            )
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("neuron activation")
    ax.set_ylabel("direct logit attribution to the correct next token")
    r = series.correlation()
    ax.set_title(
        f"{view.model} {name}: DLA vs activation, Pearson r = "
        f"{'undefined' if r is None else f'{r:.2f}'} over {len(series.dla):,} tokens",
        fontsize="medium",
    )
    ax.legend(fontsize="x-small")
    plotted.paths += save(fig, out / f"{_neuron_stem(view)}_dla_activation", dpi, formats)


def _neuron_stem(view: NeuronView) -> str:
    return f"{file_stem(view.model)}_L{view.layer}_N{view.neuron}"


def layer_figures(
    catalogue: Catalogue, model: str, layer: int, out: Path, dpi: int, formats: tuple[str, ...]
) -> Plotted:
    """The layer's label scores against its null control, and cos(w_in, w_out) against
    kurtosis per neuron (the essay's memory-management neurons sit at strongly negative
    cosine)."""
    plotted = Plotted()
    record = catalogue.resolve_model(model)
    rows = catalogue.rank(record.name, split=SCORE_SPLIT, layers=[layer])
    scores = [r.score for r in rows if r.score is not None and math.isfinite(r.score)]
    plt = pyplot()
    if scores:
        null = _null_control(catalogue, record.name, layer, rows[0].neuron)
        fig, ax = plt.subplots(figsize=(6, 3.2))
        bins = [i / 25 for i in range(-25, 26)]
        ax.hist(scores, bins=bins, label=f"labels ({len(scores)} neurons)")
        if null is not None and null.values:
            ax.hist(null.values, bins=bins, alpha=0.6, color="grey", label="null control")
            if null.p95 is not None:
                ax.axvline(null.p95, color="black", linestyle="--", linewidth=1)
        else:
            plotted.notes.append(f"layer {layer}: no null control stored for these scores")
        ax.set_xlabel(f"score (Pearson r, {SCORE_SPLIT.value} split)")
        ax.set_ylabel("neurons")
        ax.set_title(f"{record.name} layer {layer}: label scores", fontsize="medium")
        ax.legend(fontsize="small")
        plotted.paths += save(fig, out / f"{file_stem(record.name)}_L{layer}_scores", dpi, formats)
    else:
        plotted.notes.append(
            f"layer {layer}: no score figure: no label of this layer has a "
            f"{SCORE_SPLIT.value} score (run labeller explain and labeller score)"
        )
    summaries = neuron_summaries(
        catalogue, record.name, [(layer, n) for n in range(record.d_mlp)]
    ).values()
    points = [
        (s.cosine, s.kurtosis) for s in summaries if s.cosine is not None and s.kurtosis is not None
    ]
    if points:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        ax.scatter([c for c, _ in points], [k + 3 for _, k in points], s=6)
        ax.set_yscale("log")
        ax.set_xlabel("cos(w_in, w_out)")
        ax.set_ylabel("kurtosis (excess + 3)")
        ax.set_title(f"{record.name} layer {layer}: weights vs heavy tails", fontsize="medium")
        plotted.paths += save(
            fig, out / f"{file_stem(record.name)}_L{layer}_cosine_kurtosis", dpi, formats
        )
    else:
        plotted.notes.append(
            f"layer {layer}: no cos(w_in, w_out) vs kurtosis figure: no neuron has both stored"
        )
    return plotted


def _null_control(catalogue: Catalogue, model: str, layer: int, neuron: int) -> NullControl | None:
    """The null control the layer's ranked scores are read against: the one of the top
    neuron's primary score (same simulator, prompt version and kind as `rank` compares)."""
    kind = catalogue.rank_prediction(model, SCORE_SPLIT)
    simulators = catalogue.rank_simulators(model, SCORE_SPLIT, kind)
    if not simulators:
        return None
    simulator = simulators[0][0]
    for explanation in catalogue.neuron_view(model, layer, neuron).explanations:
        for score in explanation.scores:
            if (score.split, score.simulator, score.prediction) == (SCORE_SPLIT, simulator, kind):
                return catalogue.latest_null_control(
                    model, simulator, score.prompt_version, SCORE_SPLIT, kind, score.windows
                )
    return None


def file_stem(model: str) -> str:
    """A model name (an HF name or a path) as one safe file-name part."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", model).strip("-.") or "model"


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.1f}"
