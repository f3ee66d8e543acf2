"""The comparison report from gathered numbers and the catalogue's labels: label rates, label
agreement of matched neurons, and report.md / report.json / PNG figures in one folder."""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from pathlib import Path

from labeller.catalogue import Catalogue
from labeller.records import CompareReport, LabelAgreement, LabelRates, LayerComparison, Split

SCORE_THRESHOLDS = (0.3, 0.5, 0.7, 0.8)  # 0.8: OpenAI's "well explained" line for GPT-2 XL
AGREE_JACCARD = 0.5
COMMON_WORD_SHARE = 0.2  # words in more labels than this say nothing about one neuron
EXAMPLE_PAIRS = 8

Labels = dict[tuple[int, int], str]
Scores = dict[tuple[int, int], float]


def catalogue_labels(
    catalogue: Catalogue, model: str, layers: list[int], d_mlp: int
) -> tuple[LabelRates, Labels, Scores]:
    """The model's label rates over its compared neurons, and each neuron's label text and
    valid score (its accepted label, else its best-scoring proposed one, as `labeller rank`
    shows it)."""
    neurons = len(layers) * d_mlp
    if model not in {m.name for m in catalogue.models()}:
        note = f"{model} is not in the catalogue: scan, explain and score it for label rates"
        return _rates(model, neurons, [], note), {}, {}
    rows = catalogue.rank(model, split=Split.VALID, layers=layers)
    labels = {(r.layer, r.neuron): r.label for r in rows if r.label is not None}
    scored = [r for r in rows if r.score is not None and math.isfinite(r.score)]
    scores = {(r.layer, r.neuron): r.score for r in scored if r.score is not None}
    none = f"{model} has no valid-split scores in the catalogue"
    rates = _rates(
        model, neurons, [r.score for r in scored if r.score is not None], None if scored else none
    )
    rates.labelled = len(labels)
    rates.above_chance = sum(1 for r in scored if r.above_chance)
    rates.sources = sorted({r.source for r in rows if r.source})
    return rates, labels, scores


def kurtosis_score_correlation(
    layers: list[LayerComparison], side: int, scores: Scores
) -> tuple[float | None, int]:
    """Spearman rank correlation between a neuron's excess kurtosis (its neuron stage) and its
    label's score, over neurons that have both (the essay's 9.41: do heavy tails go with
    monosemanticity?), and how many neurons that was."""
    pairs = []
    for layer in layers:
        stage = next(s for s in layer.distributions[side].stages if s.stage == "neuron")
        pairs += [
            (k, scores[layer.layer, n])
            for n, k in enumerate(stage.kurtosis)
            if k is not None and (layer.layer, n) in scores
        ]
    if len(pairs) < 3:
        return None, len(pairs)
    return _pearson(_ranks([k for k, _ in pairs]), _ranks([s for _, s in pairs])), len(pairs)


def _ranks(values: list[float]) -> list[float]:
    """Ranks from 1, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for i in order[start : end + 1]:
            ranks[i] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _pearson(x: list[float], y: list[float]) -> float | None:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else None


def _rates(model: str, neurons: int, scores: list[float], note: str | None) -> LabelRates:
    return LabelRates(
        model=model,
        neurons=neurons,
        labelled=0,
        scored=len(scores),
        above_chance=0,
        sources=[],
        share_at_least={
            f"{t:.1f}": sum(1 for s in scores if s >= t) / neurons if neurons else 0.0
            for t in SCORE_THRESHOLDS
        },
        note=note,
    )


def label_agreement(
    layer: LayerComparison, labels_a: Labels, labels_b: Labels, seed: int
) -> LabelAgreement:
    """Word overlap of each A neuron's label with its best match's label in B, and the same
    for A's labels paired with B's labels in a seeded random order (the chance level)."""
    pairs = [
        (n, m, r)
        for n, (m, r) in enumerate(zip(layer.a_to_b.match, layer.a_to_b.r, strict=True))
        if m is not None
        and r is not None
        and (layer.layer, n) in labels_a
        and (layer.layer, m) in labels_b
    ]
    common = _common_words([*labels_a.values(), *labels_b.values()])
    words = lambda text: _words(text, common)  # noqa: E731
    matched = [
        _jaccard(words(labels_a[layer.layer, n]), words(labels_b[layer.layer, m]))
        for n, m, _ in pairs
    ]
    others = [m for _, m, _ in pairs]
    random.Random(seed).shuffle(others)
    baseline = [
        _jaccard(words(labels_a[layer.layer, n]), words(labels_b[layer.layer, m]))
        for (n, _, _), m in zip(pairs, others, strict=True)
    ]
    strongest = sorted(pairs, key=lambda p: -p[2])[:EXAMPLE_PAIRS]
    return LabelAgreement(
        pairs=len(pairs),
        mean_jaccard=_mean(matched),
        agreeing=_mean([float(j >= AGREE_JACCARD) for j in matched]),
        baseline_mean_jaccard=_mean(baseline),
        baseline_agreeing=_mean([float(j >= AGREE_JACCARD) for j in baseline]),
        examples=[
            (n, m, r, labels_a[layer.layer, n], labels_b[layer.layer, m]) for n, m, r in strongest
        ],
    )


def _words(text: str, common: set[str]) -> set[str]:
    return set(re.findall(r"\w+", text.lower())) - common


def _common_words(texts: list[str]) -> set[str]:
    counts = Counter(w for t in texts for w in set(re.findall(r"\w+", t.lower())))
    return {w for w, c in counts.items() if c > COMMON_WORD_SHARE * len(texts)}


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def write_report(report: CompareReport, out: Path, dpi: int) -> list[Path]:
    """report.json, the figures and report.md (which links them) in `out`; the paths written."""
    from labeller.plot.compare_figures import compare_figures

    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    json_path.write_text(report.model_dump_json() + "\n", encoding="utf-8")
    figures = compare_figures(report, out, dpi)
    md_path = out / "report.md"
    md_path.write_text(render_markdown(report, figures), encoding="utf-8")
    return [md_path, json_path, *figures.values()]


def render_markdown(report: CompareReport, figures: dict[str, Path]) -> str:
    """The report as a person reads it; every number is one from report.json."""
    a, b = (m.name for m in report.models)
    lines = [
        f"# {a} vs {b}",
        "",
        f"Both models read the same {report.tokens:,} tokens of `{report.dataset}`: "
        f"{report.windows:,} full windows of {report.ctx} tokens in a random order (seed "
        f"{report.seed}). Shuffled baseline: each batch of {a}'s activations against {b}'s on "
        f"the previous batch's windows ({report.shuffled_tokens:,} tokens), so the two sides "
        "share positions but not text. Distributions: moments over every token; near-zero "
        f"shares and histograms over the first {report.sample_tokens:,} tokens.",
        "",
        "| model | activation | layers | neurons per layer | neuron hook |",
        "|---|---|---|---|---|",
        *(
            f"| {m.name} | {m.act_fn} | {m.n_layers} | {m.d_mlp} | `{m.neuron_hook}` |"
            for m in report.models
        ),
    ]
    for layer in report.layers:
        lines += _layer_markdown(layer, figures)
    lines += _rates_markdown(report, figures)
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _median(values: list[float | None]) -> float | None:
    real = sorted(v for v in values if v is not None)
    if not real:
        return None
    mid = len(real) // 2
    return real[mid] if len(real) % 2 else (real[mid - 1] + real[mid]) / 2


def _layer_markdown(layer: LayerComparison, figures: dict[str, Path]) -> list[str]:
    n = len(layer.a_to_b.match)
    lines = [
        "",
        f"## Layer {layer.layer}: best-matching neurons",
        "",
        "| direction | median best r | shuffled median | shuffled p99 | share above p99 "
        "| same index |",
        "|---|---|---|---|---|---|",
    ]
    for m in (layer.a_to_b, layer.b_to_a):
        lines.append(
            f"| {m.source} -> {m.target} | {_fmt(m.median_r)} | {_fmt(m.shuffled_median_r)} "
            f"| {_fmt(m.shuffled_p99)} | {100 * m.above_shuffled_p99:.1f}% "
            f"| {100 * m.same_index:.1f}% |"
        )
    lines += [
        "",
        f"Mutual best matches (each the other's best): {layer.mutual} of {n}.",
        "",
        f"![best matches]({figures[f'best_match_L{layer.layer}'].name})",
        "",
        f"## Layer {layer.layer}: activation distributions",
        "",
        "Medians over neurons (kurtosis is excess kurtosis; near zero: |a| <= 5% of the "
        "neuron's max |a|).",
        "",
        "| model | stage | median kurtosis | median skewness | median near-zero share |",
        "|---|---|---|---|---|",
    ]
    for side in layer.distributions:
        for stage in side.stages:
            lines.append(
                f"| {side.model} | {stage.stage} | {_fmt(_median(list(stage.kurtosis)), 2)} | "
                f"{_fmt(_median(list(stage.skewness)), 2)} | "
                f"{_fmt(_median(list(stage.near_zero)), 3)} |"
            )
    lines += [
        "",
        f"![shape]({figures[f'shape_L{layer.layer}'].name})",
        "",
        f"![stages]({figures[f'stages_L{layer.layer}'].name})",
    ]
    agreement = layer.agreement
    if agreement is not None:
        lines += ["", f"## Layer {layer.layer}: do matched neurons' labels agree?", ""]
        if not agreement.pairs:
            lines.append("No matched pair has labels in both models.")
        else:
            lines += [
                f"{agreement.pairs} best-matched pairs have labels in both models. Mean word "
                f"overlap (Jaccard) {_fmt(agreement.mean_jaccard)}, {_pct(agreement.agreeing)} "
                f"agree (Jaccard >= {AGREE_JACCARD}); labels paired at random: "
                f"{_fmt(agreement.baseline_mean_jaccard)}, {_pct(agreement.baseline_agreeing)}.",
                "",
                "| A | B | r | label A | label B |",
                "|---|---|---|---|---|",
                *(
                    f"| {n} | {m} | {r:.3f} | {_cell(la)} | {_cell(lb)} |"
                    for n, m, r, la, lb in agreement.examples
                ),
            ]
    return lines


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f}%"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _rates_markdown(report: CompareReport, figures: dict[str, Path]) -> list[str]:
    lines = ["", "## Labels scoring above thresholds", ""]
    if report.label_rates is None:
        return [*lines, "No catalogue given (`--db`): no label rates."]
    thresholds = list(report.label_rates[0].share_at_least)
    lines += [
        "Share of all compared neurons whose label (accepted, else best proposed) scores at "
        "least the threshold on the valid split.",
        "",
        "| model | neurons | labelled | scored | above chance | "
        + " | ".join(f">= {t}" for t in thresholds)
        + " | label sources | Spearman(kurtosis, score) |",
        "|---|---|---|---|---|" + "---|" * len(thresholds) + "---|---|",
    ]
    for rate in report.label_rates:
        shares = " | ".join(_pct(rate.share_at_least[t]) for t in thresholds)
        sources = ", ".join(rate.sources) or "-"
        lines.append(
            f"| {rate.model} | {rate.neurons} | {rate.labelled} | {rate.scored} | "
            f"{rate.above_chance} | {shares} | {sources} | "
            f"{_fmt(rate.kurtosis_score_spearman)} (n={rate.kurtosis_score_neurons}) |"
        )
    lines += [f"\n{rate.note}." for rate in report.label_rates if rate.note]
    if "label_rates" in figures:
        lines += ["", f"![label rates]({figures['label_rates'].name})"]
    return lines
