"""Scores as pure functions over plain arrays (no model, no LLM, no SQL)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def correlation_score(
    true: Sequence[Sequence[float]], simulated: Sequence[Sequence[float]]
) -> float | None:
    """Pearson r over all tokens of all windows concatenated (Bills et al.'s ev_correlation_score).

    Not a mean of per-window r. None when either side is constant: no score, never a number.
    """
    if len(true) != len(simulated):
        raise ValueError("true and simulated hold different numbers of windows")
    for t, s in zip(true, simulated, strict=True):
        if len(t) != len(s):
            raise ValueError("a window's simulation has a different length from its tokens")
    x = np.concatenate([np.asarray(t, dtype=np.float64) for t in true]) if true else np.zeros(0)
    y = np.concatenate([np.asarray(s, dtype=np.float64) for s in simulated]) if true else x
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    xc, yc = x - x.mean(), y - y.mean()
    return float((xc @ yc) / np.sqrt((xc @ xc) * (yc @ yc)))


def normalise_for_prompt(activations: Sequence[float], max_activation: float) -> list[int]:
    """Bills et al.: min(10, floor(10 * relu(a) / max_a)), max over the records shown."""
    if max_activation <= 0:
        return [0] * len(activations)
    return [min(10, int(np.floor(10 * max(a, 0.0) / max_activation))) for a in activations]


def null_summary(values: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """Mean, standard deviation (population) and 95th percentile (linear) of null r values;
    all None when there are none."""
    if not values:
        return None, None, None
    r = np.asarray(values, dtype=np.float64)
    return float(r.mean()), float(r.std()), float(np.percentile(r, 95))


def above_chance(score: float | None, null_p95: float | None) -> bool | None:
    """Whether a score clears its null control's 95th percentile; None when either is unknown
    (no score, or no null control for that simulator, prompt, split and prediction kind)."""
    if score is None or null_p95 is None or score != score:  # NaN: no verdict
        return None
    return score > null_p95
