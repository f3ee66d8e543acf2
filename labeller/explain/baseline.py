"""The offline token-lookup baseline that LLM labels have to beat; needs no network.

Explainer (`baseline-v2`): every token of every train window counts, not only each window's
peak. For each token type (its exact string) we take the mean of relu(activation) over all its
occurrences in the train windows; a type is named when its mean is at least `SHARE` (half) of
the strongest type's mean, strongest first, at most `MAX_TOKENS_NAMED` (8) of them. Each named
token carries its strength, round(10 * mean / strongest mean), so a neuron that fires equally on
" def", " class" and " return" reads `fires on " def" (10), " class" (10) and " return" (10)`.
Why the mean per type: a class of tokens that all drive the neuron is named as a class, and a
token that fires once at a peak but stays quiet elsewhere is not overrated. Why half: below it
the label names tokens the neuron barely prefers, which only adds false positives to the floor.
The strongest type seen at least twice (`MIN_OCCURRENCES`) sets the yardstick (any type, if
none recurs): a type seen once has a mean of one sample, and a rare token at one peak would
otherwise raise the bar until the recurring class went unnamed. Strengths are capped at 10.

Simulator: predicts each quoted token's strength where a token matches it (10 when the label
gives no strength, as a person's `fires on "def"` does), 0 elsewhere; `after "X"` still
restricts matches to tokens that follow X. v1 labels (peak tokens, no strengths) still parse,
but v1 and v2 scores are not comparable: the VERSION records which made them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from labeller.explain.client import DryRun
from labeller.explain.explainer import Candidate, Explainer, Windows
from labeller.explain.simulator import Job, NotScorable, Simulator
from labeller.records import PredictionKind

SOURCE = "baseline"
VERSION = "baseline-v2"
SHARE = 0.5
MAX_TOKENS_NAMED = 8
MIN_OCCURRENCES = 2
FULL = 10

QUOTED = re.compile(r'(after )?"([^"]+)"(?:\s*\((\d+(?:\.\d+)?)\))?')


class NotScorableOffline(NotScorable):
    """The label quotes no token the offline simulator could look for."""


def _quote(token: str) -> str:
    return '"' + token.replace('"', "'").replace("\n", "\\n") + '"'


def token_strengths(windows: Windows) -> list[tuple[str, int]]:
    """The named token types and their 0-10 strengths, strongest first (see module doc)."""
    total: dict[str, float] = {}
    raw: dict[str, float] = {}
    count: dict[str, int] = {}
    for tokens, acts in windows:
        for token, act in zip(tokens, acts, strict=False):
            total[token] = total.get(token, 0.0) + max(act, 0.0)
            raw[token] = raw.get(token, 0.0) + act
            count[token] = count.get(token, 0) + 1
    if not total:
        return []
    mean = {token: total[token] / count[token] for token in total}
    ranked = sorted(mean, key=lambda t: (-mean[t], -count[t], t))
    # The yardstick is the strongest type seen at least twice: one sample at a peak must not
    # raise the bar so high that the recurring class goes unnamed.
    recurring = (mean[t] for t in ranked if count[t] >= MIN_OCCURRENCES and mean[t] > 0)
    top = next(recurring, mean[ranked[0]])
    if top <= 0:  # nothing fires: the least negative token type is the only guess left
        return [(max(raw, key=lambda t: (raw[t] / count[t], t)), FULL)]
    kept = [t for t in ranked if mean[t] >= SHARE * top][:MAX_TOKENS_NAMED]
    return [(t, min(FULL, round(FULL * mean[t] / top))) for t in kept]


def explain_baseline(windows: Windows) -> str:
    """E.g. `fires on " def" (10), " class" (9) and " return" (6)`."""
    named = [f"{_quote(token)} ({strength})" for token, strength in token_strengths(windows)]
    if len(named) > 1:
        named = [", ".join(named[:-1]), named[-1]]
    return "fires on " + " and ".join(named)


def _matches(token: str, target: str) -> bool:
    token_core, target_core = token.strip(), target.strip()
    if not target_core:
        return token == target
    return token_core == target_core or (len(target_core) >= 3 and target_core in token_core)


def simulate_baseline(label: str, windows: Sequence[Sequence[str]]) -> list[list[float]]:
    """Each quoted token's strength (10 if none given) where a token matches it and the
    previous token any `after "..."`; 0 elsewhere."""
    quoted = QUOTED.findall(label.replace("\\n", "\n"))
    targets = [
        (text, min(float(value), FULL) if value else FULL)
        for after, text, value in quoted
        if not after
    ]
    contexts = [text for after, text, _ in quoted if after]
    if not targets:
        raise NotScorableOffline(
            "not scorable offline: the label quotes no token (put tokens in double quotes)"
        )
    predictions = []
    for tokens in windows:
        values = []
        for i, token in enumerate(tokens):
            value = max((v for t, v in targets if _matches(token, t)), default=0.0)
            if (
                value
                and contexts
                and not (i > 0 and any(_matches(tokens[i - 1], c) for c in contexts))
            ):
                value = 0.0
            values.append(float(value))
        predictions.append(values)
    return predictions


class BaselineExplainer(Explainer):
    """One label per neuron, from the token types that drive it; makes no LLM calls."""

    name = SOURCE
    prompt_version = VERSION
    producer_model = None

    async def explain(self, windows: Windows) -> list[Candidate]:
        return [Candidate(0, explain_baseline(windows), "", None, 1)]

    def dry_run(self, neurons: Iterable[Windows]) -> DryRun:
        return DryRun(offline=True)


class BaselineSimulator(Simulator):
    """Graded predictions on the tokens a label quotes; labels that quote none are not
    scorable offline."""

    name = SOURCE
    prompt_version = VERSION
    producer_model = None
    prediction = PredictionKind.RULE

    async def simulate(
        self, explanation: str, windows: Sequence[Sequence[str]]
    ) -> list[list[float]]:
        return simulate_baseline(explanation, windows)

    def dry_run(self, jobs: Iterable[Job]) -> DryRun:
        return DryRun(offline=True)
