"""One perturbation experiment's result: the tokens coloured by how much perturbing each one
moved the target activation (blue: it dropped, orange: it rose), and the biggest movers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.widgets import Static

from labeller.model.perturb_kinds import SAMPLES, PerturbationKind
from labeller.tui.text import fmt, heat, shown, spark

if TYPE_CHECKING:
    from labeller.model.perturb import Perturbation

# Each experiment's title and what its numbers mean; the sample counts are the ones the
# experiments run with (`perturb_kinds.SAMPLES`), and each result says its own as well.
TITLES: dict[PerturbationKind, tuple[str, str]] = {
    PerturbationKind.DELETE: ("Delete each earlier token", "the target without that token"),
    PerturbationKind.RESAMPLE: (
        "Resample each token",
        f"{SAMPLES[PerturbationKind.RESAMPLE]} random vocabulary tokens in its place; "
        "mean ± spread",
    ),
    PerturbationKind.NOISE: (
        "Noise on each token's embedding",
        f"Gaussian, σ = the embeddings' std; {SAMPLES[PerturbationKind.NOISE]} draws",
    ),
    PerturbationKind.INSERT: (
        "Insert a random token after each position",
        f"{SAMPLES[PerturbationKind.INSERT]} random tokens; mean ± spread",
    ),
    PerturbationKind.TRUNCATE: (
        "Truncate to the last k tokens",
        "colour: Δ when the text starts at that token",
    ),
}
MOVERS = 4


class ExperimentView(Static):
    DEFAULT_CSS = """
    ExperimentView { height: auto; padding: 0 1; margin-bottom: 1; }
    """

    def __init__(self, kind: PerturbationKind) -> None:
        super().__init__(id=f"experiment-{kind}")
        self.kind = kind

    def _head(self, note: str) -> Text:
        title, description = TITLES[self.kind]
        head = Text(title, "bold")
        head.append(f"  {description}", "dim")
        if note:
            head.append(f"\n{note}", "dim italic")
        return head

    def show_state(self, note: str) -> None:
        self.update(self._head(note))

    def show_result(self, result: Perturbation, tokens: list[str]) -> None:
        text = self._head("")
        deltas = [0.0] * (result.target + 1)
        if result.kind is PerturbationKind.TRUNCATE:
            for k, delta in zip(result.positions, result.deltas, strict=True):
                deltas[result.target + 1 - k] = delta
        else:
            for position, delta in zip(result.positions, result.deltas, strict=True):
                deltas[position] = delta
        scale = max([abs(result.base), *(abs(d) for d in deltas), 1e-9])
        text.append("\n")
        text.append_text(
            heat(tokens[: result.target + 1], deltas, scale, result.target, separator="│")
        )
        text.append("\n")
        if result.kind is PerturbationKind.TRUNCATE:
            text.append_text(self._truncation(result, tokens))
        elif not result.positions:
            text.append("nothing before the target to perturb", "dim")
        else:
            text.append_text(self._movers(result, tokens))
        self.update(text)

    def _movers(self, result: Perturbation, tokens: list[str]) -> Text:
        out = Text(f"base {fmt(result.base)} · change as % of it · ", "dim")
        if result.samples > 1:
            out.append(f"{result.samples} samples per token · ", "dim")
        order = sorted(range(len(result.positions)), key=lambda i: result.deltas[i])
        drops = [i for i in order if result.deltas[i] < 0][:MOVERS]
        rises = [i for i in reversed(order) if result.deltas[i] > 0][:1]
        for label, chosen, style in (("drops", drops, "blue"), ("rises", rises, "dark_orange")):
            if not chosen:
                continue
            out.append(f"{label}: ", style)
            for i in chosen:
                position = result.positions[i]
                out.append(f"'{shown(tokens[position])}'", "bold")
                out.append(f"#{position} ", "dim")
                out.append(_change(result.deltas[i], result.base))
                if result.spread[i] > 0:
                    out.append(f"±{_change(result.spread[i], result.base, sign=False)}", "dim")
                out.append("  ")
        return out

    def _truncation(self, result: Perturbation, tokens: list[str]) -> Text:
        out = Text(f"full {fmt(result.base)} · activation vs k (1…{len(result.values)}) ", "dim")
        out.append(spark(result.values, 60), "cyan")
        if result.base > 0:
            enough = next(
                (
                    k
                    for k, v in zip(result.positions, result.values, strict=True)
                    if v >= 0.5 * result.base
                ),
                None,
            )
            if enough is not None:
                kept = tokens[result.target + 1 - enough : result.target + 1]
                out.append(f"\nhalf the activation needs the last {enough} token(s): ")
                out.append(" ".join(f"'{shown(t)}'" for t in kept[-6:]), "bold")
        return out


def _change(delta: float, base: float, *, sign: bool = True) -> str:
    """A move as a share of the unperturbed activation (what matters whatever the neuron's
    scale), or as a number when the base is zero."""
    if abs(base) > 1e-9:
        return f"{delta / abs(base):{'+' if sign else ''}.0%}"
    return f"{delta:{'+' if sign else ''}.3g}"
