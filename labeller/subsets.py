"""Corpus subsets of a neuron, and the interpretability-illusion measure: pure functions over a
neuron's view, which `show`, `rank --by illusion` and the TUI share.

A neuron can look monosemantic on one kind of text and do something else on another
(Bolukbasi et al. 2021). The scan keeps each subset's top windows; here they are compared.

For two subsets a and b with maxima m_a, m_b and sets P_a, P_b of the tokens their top windows
peak on (stripped of surrounding whitespace):

    strength   = min(m_a, m_b) / max(m_a, m_b)   (0 when neither is positive)
    overlap    = |P_a & P_b| / |P_a | P_b|
    divergence = strength x (1 - overlap)

High when the neuron fires about as strongly on both kinds of text, on different tokens; a
neuron that fires on code only (low strength) or on the same tokens everywhere (high overlap)
scores low. With the label scored per subset (`score --on subsets`), `score_gap` is its best
minus worst subset score, and the measure is

    max(divergence, strength x min(score_gap, 1))

(strength of the best- and worst-scored subsets): a label that fits one subset and not the
other counts only where the neuron fires there too; on text where it hardly fires the
activations are noise and no label scores well.
"""

from __future__ import annotations

import itertools
from collections import Counter

from labeller.records import (
    Example,
    Explanation,
    Illusion,
    NeuronView,
    ScoreMethod,
    Split,
    SubsetSummary,
)

PEAK_TOKENS_SHOWN = 5


def peak_token(example: Example) -> str:
    """The token a window peaks on, stripped of surrounding whitespace (" def" and "def" are
    one token class); an all-space token stays as it is, shown by repr."""
    token = example.tokens[example.max_index] if example.tokens else ""
    return token.strip() or repr(token)


def subset_scores(label: Explanation | None, split: Split = Split.VALID) -> dict[str, float]:
    """The label's latest subset_top score per subset on `split` (scores not None only)."""
    found: dict[str, float] = {}
    if label is None:
        return found
    for score in sorted(label.scores, key=lambda s: s.created_at):
        if (
            score.method is ScoreMethod.SUBSET_TOP
            and score.split is split
            and score.subset is not None
            and score.score is not None
        ):
            found[score.subset] = score.score
    return found


def subset_summaries(view: NeuronView) -> list[SubsetSummary]:
    """One summary per subset the neuron has top windows in, by subset name."""
    scores = subset_scores(view.label_explanation())
    by_subset: dict[str, list[Example]] = {}
    for example in view.subset_examples:
        if example.subset is not None:
            by_subset.setdefault(example.subset, []).append(example)
    return [
        SubsetSummary(
            subset=name,
            windows=len(examples),
            max_activation=max(e.max_activation for e in examples),
            peak_tokens=[t for t, _ in Counter(peak_token(e) for e in examples).most_common()][
                :PEAK_TOKENS_SHOWN
            ],
            score=scores.get(name),
        )
        for name, examples in sorted(by_subset.items())
    ]


def _peaks(view: NeuronView) -> dict[str, tuple[float, set[str]]]:
    found: dict[str, tuple[float, set[str]]] = {}
    for example in view.subset_examples:
        if example.subset is None:
            continue
        top, tokens = found.get(example.subset, (float("-inf"), set()))
        tokens.add(peak_token(example))
        found[example.subset] = (max(top, example.max_activation), tokens)
    return found


def strength(m_a: float, m_b: float) -> float:
    """min / max of two subsets' maxima: 1 when the neuron fires as strongly on both."""
    high, low = max(m_a, m_b), min(m_a, m_b)
    return max(low, 0.0) / high if high > 0 else 0.0


def divergence(a: tuple[float, set[str]], b: tuple[float, set[str]]) -> float:
    """strength x (1 - overlap) of two subsets' (max, peak tokens); see the module docstring."""
    (m_a, p_a), (m_b, p_b) = a, b
    overlap = len(p_a & p_b) / len(p_a | p_b) if p_a | p_b else 1.0
    return strength(m_a, m_b) * (1.0 - overlap)


def illusion(view: NeuronView) -> Illusion | None:
    """The neuron's illusion measure; None when it has top windows in fewer than two subsets."""
    peaks = _peaks(view)
    if len(peaks) < 2:
        return None
    pairs = [
        (divergence(peaks[a], peaks[b]), [a, b])
        for a, b in itertools.combinations(sorted(peaks), 2)
    ]
    example_divergence, pair = max(pairs, key=lambda p: p[0])
    scores = {
        name: r for name, r in subset_scores(view.label_explanation()).items() if name in peaks
    }
    gap, gap_term = None, 0.0
    if len(scores) >= 2:
        best, worst = max(scores, key=lambda s: scores[s]), min(scores, key=lambda s: scores[s])
        gap = scores[best] - scores[worst]
        gap_term = strength(peaks[best][0], peaks[worst][0]) * min(gap, 1.0)
        if gap_term > example_divergence:
            pair = [best, worst]
    return Illusion(
        measure=max(example_divergence, gap_term),
        example_divergence=example_divergence,
        score_gap=gap,
        pair=pair,
    )
