"""The offline token-lookup baseline that LLM labels have to beat; needs no network.

The explainer names the tokens that carry each top window's maximum (and the token before them
when it is consistent); the simulator predicts 10 on tokens matching a label's quoted strings.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

from labeller.explain.client import DryRun
from labeller.explain.explainer import Candidate, Explainer, Windows
from labeller.explain.simulator import Job, NotScorable, Simulator
from labeller.records import PredictionKind

SOURCE = "baseline"
VERSION = "baseline-v1"
CONTEXT_SHARE = 0.6
MAX_TOKENS_NAMED = 3

QUOTED = re.compile(r'(after )?"([^"]+)"')


class NotScorableOffline(NotScorable):
    """The label quotes no token the offline simulator could look for."""


def _quote(token: str) -> str:
    return '"' + token.replace('"', "'").replace("\n", "\\n") + '"'


def _peak(acts: Sequence[float]) -> int:
    return max(range(len(acts)), key=lambda i: acts[i])


def explain_baseline(windows: Windows) -> str:
    """E.g. `fires on " def" and " class"`, or `fires on " the" after " love"`."""
    weight: dict[str, float] = {}
    peaks: Counter[str] = Counter()
    before: dict[str, Counter[str]] = {}
    for tokens, acts in windows:
        peak = _peak(acts)
        token = tokens[peak]
        weight[token] = weight.get(token, 0.0) + (max(acts[peak], 0.0) or 1e-9)
        peaks[token] += 1
        if peak > 0:
            before.setdefault(token, Counter())[tokens[peak - 1]] += 1
    named = sorted(weight, key=weight.__getitem__, reverse=True)[:MAX_TOKENS_NAMED]
    label = "fires on " + " and ".join(_quote(t) for t in named)
    lead = named[0]
    if lead in before and peaks[lead] >= 2:
        context, seen = before[lead].most_common(1)[0]
        if seen / peaks[lead] >= CONTEXT_SHARE:
            label += f" after {_quote(context)}"
    return label


def _matches(token: str, target: str) -> bool:
    token_core, target_core = token.strip(), target.strip()
    if not target_core:
        return token == target
    return token_core == target_core or (len(target_core) >= 3 and target_core in token_core)


def simulate_baseline(label: str, windows: Sequence[Sequence[str]]) -> list[list[float]]:
    """10 where a token matches a quoted string (and the previous token any `after "..."`)."""
    quoted = QUOTED.findall(label.replace("\\n", "\n"))
    targets = [text for after, text in quoted if not after]
    contexts = [text for after, text in quoted if after]
    if not targets:
        raise NotScorableOffline(
            "not scorable offline: the label quotes no token (put tokens in double quotes)"
        )
    predictions = []
    for tokens in windows:
        values = []
        for i, token in enumerate(tokens):
            hit = any(_matches(token, t) for t in targets)
            if hit and contexts:
                hit = i > 0 and any(_matches(tokens[i - 1], c) for c in contexts)
            values.append(10.0 if hit else 0.0)
        predictions.append(values)
    return predictions


class BaselineExplainer(Explainer):
    """One label per neuron, from its peak tokens; makes no LLM calls."""

    name = SOURCE
    prompt_version = VERSION
    producer_model = None

    async def explain(self, windows: Windows) -> list[Candidate]:
        return [Candidate(0, explain_baseline(windows), "", None, 1)]

    def dry_run(self, neurons: Iterable[Windows]) -> DryRun:
        return DryRun(offline=True)


class BaselineSimulator(Simulator):
    """10 on the tokens a label quotes; labels that quote none are not scorable offline."""

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
