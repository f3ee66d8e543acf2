"""The figures of `labeller compare`'s report."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from labeller.plot import pyplot, save
from labeller.records import CompareReport, Histogram, LayerComparison

STAGE_TITLES = {
    "pre": "pre-activation",
    "neuron": "neuron (GELU output; SoLU before its LayerNorm)",
    "post": "post (SoLU after its LayerNorm)",
    "ln_scale": "SoLU LayerNorm scale (std of its input)",
}


def compare_figures(report: CompareReport, out: Path, dpi: int) -> dict[str, Path]:
    """Every figure of the report, by the name report.md links it under."""
    figures: dict[str, Path] = {}
    for layer in report.layers:
        suffix = f"_L{layer.layer}"
        figures[f"best_match{suffix}"] = _best_match(layer, out / f"best_match{suffix}", dpi)
        figures[f"shape{suffix}"] = _shape(layer, out / f"shape{suffix}", dpi)
        figures[f"stages{suffix}"] = _stages(layer, out / f"stages{suffix}", dpi)
    rates = [r for r in report.label_rates or [] if r.scored]
    if rates:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 3.2))
        thresholds = list(rates[0].share_at_least)
        width = 0.8 / len(rates)
        for i, rate in enumerate(rates):
            xs = [j + i * width for j in range(len(thresholds))]
            ax.bar(xs, [100 * rate.share_at_least[t] for t in thresholds], width, label=rate.model)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(thresholds))])
        ax.set_xticklabels([f"score >= {t}" for t in thresholds])
        ax.set_ylabel("% of neurons")
        ax.set_title("Neurons with a label scoring at least ... (valid split)")
        ax.legend()
        figures["label_rates"] = save(fig, out / "label_rates", dpi)[0]
    return figures


def _best_match(layer: LayerComparison, stem: Path, dpi: int) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    bins = [i / 50 for i in range(-5, 51)]
    for values, label, style in (
        (layer.a_to_b.r, f"{layer.a_to_b.source} -> {layer.a_to_b.target}", {}),
        (layer.b_to_a.r, f"{layer.b_to_a.source} -> {layer.b_to_a.target}", {"alpha": 0.6}),
        (layer.a_to_b.shuffled_r, "shuffled windows (chance)", {"color": "grey", "alpha": 0.6}),
    ):
        ax.hist([v for v in values if v is not None], bins=bins, label=label, **style)
    if layer.a_to_b.shuffled_p99 is not None:
        ax.axvline(layer.a_to_b.shuffled_p99, color="black", linestyle="--", linewidth=1)
    ax.set_xlabel("best-match Pearson r")
    ax.set_ylabel("neurons")
    ax.set_title(f"Layer {layer.layer}: each neuron's best match in the other model")
    ax.legend(fontsize="small")
    return save(fig, stem, dpi)[0]


def _shape(layer: LayerComparison, stem: Path, dpi: int) -> Path:
    """Per-neuron kurtosis, skewness and near-zero share of the neuron stage, per model."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
    panels: list[tuple[str, Any]] = [
        ("log10(excess kurtosis + 3)", lambda s: _log_kurtosis(s.kurtosis)),
        ("skewness", lambda s: [v for v in s.skewness if v is not None]),
        ("share of tokens near zero", lambda s: s.near_zero),
    ]
    for ax, (title, values) in zip(axes, panels, strict=True):
        for side in layer.distributions:
            stage = next(s for s in side.stages if s.stage == "neuron")
            ax.hist(values(stage), bins=40, alpha=0.6, label=side.model)
        ax.set_title(title, fontsize="medium")
        ax.set_ylabel("neurons")
    axes[0].legend(fontsize="small")
    fig.suptitle(f"Layer {layer.layer}: shape of each neuron's activations")
    return save(fig, stem, dpi)[0]


def _log_kurtosis(values: list[float | None]) -> list[float]:
    return [math.log10(v + 3) for v in values if v is not None and v + 3 > 0]


def _stages(layer: LayerComparison, stem: Path, dpi: int) -> Path:
    """Pooled activation histograms of every stage, both models on one axis per stage."""
    plt = pyplot()
    stages = [
        s for s in STAGE_TITLES if any(x.stage == s for d in layer.distributions for x in d.stages)
    ]
    fig, axes = plt.subplots(1, len(stages), figsize=(3.3 * len(stages), 3.2))
    for ax, stage in zip(axes, stages, strict=True):
        for colour, side in enumerate(layer.distributions):  # one colour per model throughout
            for found in (x for x in side.stages if x.stage == stage):
                centres, counts = _histogram_points(found.histogram)
                ax.step(centres, counts, where="mid", label=side.model, color=f"C{colour}")
        ax.legend(fontsize="small")
        ax.set_yscale("log")
        ax.set_title(STAGE_TITLES[stage], fontsize="small")
        ax.set_xlabel("activation")
    axes[0].set_ylabel("tokens x neurons (sample)")
    fig.suptitle(f"Layer {layer.layer}: activation distributions by stage")
    return save(fig, stem, dpi)[0]


def _histogram_points(histogram: Histogram) -> tuple[list[float], list[int]]:
    n = len(histogram.counts)
    width = (histogram.high - histogram.low) / n if n else 0.0
    return [histogram.low + (i + 0.5) * width for i in range(n)], histogram.counts
