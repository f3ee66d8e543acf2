"""`labeller plot`: figures of one neuron or one layer, read from the catalogue.

A figure whose data the catalogue does not hold is skipped with a note saying why, never drawn
from a stand-in."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from labeller.catalogue import Catalogue
from labeller.catalogue.browse import neuron_summaries
from labeller.plot import pyplot, save
from labeller.records import NeuronView, NullControl, Split, neuron_name

SCORE_SPLIT = Split.VALID


@dataclass
class Plotted:
    paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def neuron_figures(view: NeuronView, out: Path, dpi: int, formats: tuple[str, ...]) -> Plotted:
    """The neuron's activation histogram (the scan's exact stored one); per-band precision and
    DLA vs activation are noted as not available until the catalogue stores them."""
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
    stem = out / f"{file_stem(view.model)}_L{view.layer}_N{view.neuron}_histogram"
    plotted.paths += save(fig, stem, dpi, formats)
    plotted.notes.append(
        f"{name}: no per-band precision figure: the catalogue stores no per-band precision "
        "for labels yet"
    )
    plotted.notes.append(
        f"{name}: no DLA vs activation figure: the catalogue stores no direct logit attribution yet"
    )
    return plotted


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
