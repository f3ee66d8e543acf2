"""Run two models over the same token windows and gather what the comparison report needs:
exact pair-correlation sums between their neurons (and against a shuffled pairing), and per
neuron the moments and a sample of each activation stage (pre-activation, neuron, post, and
SoLU's LayerNorm scale)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from labeller.catalogue import Catalogue
from labeller.compare.report import (
    catalogue_labels,
    kurtosis_score_correlation,
    label_agreement,
)
from labeller.corpus import iter_documents, iter_windows
from labeller.errors import UserError
from labeller.model.loading import LoadedModel
from labeller.model.stages import activation_stages, stage_hooks
from labeller.records import (
    BestMatches,
    CompareReport,
    Histogram,
    LayerComparison,
    ModelLayerDistributions,
    StageDistribution,
)
from labeller.scan.accumulators import Moments
from labeller.scan.correlations import PairSums


def check_comparable(a: LoadedModel, b: LoadedModel, layers: Sequence[int]) -> None:
    """Both models must read the same tokens and have the layers asked for."""
    if a.tokenizer.get_vocab() != b.tokenizer.get_vocab() or a.bos_id != b.bos_id:
        raise UserError(
            f"{a.name} and {b.name} have different tokenizers, so they cannot read the same "
            "tokens; compare two models that share a tokenizer (e.g. a GELU/SoLU pair)"
        )
    a.check_layers(list(layers))
    b.check_layers(list(layers))


def comparison_windows(
    model: LoadedModel, dataset: str, tokens: int, ctx: int, seed: int, text_field: str = "text"
) -> list[list[int]]:
    """Full ctx-token windows (a document's shorter last window is left out, so any two windows
    line up token for token) until `tokens`, in a seeded random order: neighbouring windows then
    come from unrelated places, which the shuffled baseline relies on."""
    windows: list[list[int]] = []
    seen = 0
    for window in iter_windows(iter_documents(dataset, text_field), model.encode, ctx):
        if len(window.token_ids) < ctx:
            continue
        windows.append(window.token_ids)
        seen += ctx
        if seen >= tokens:
            break
    random.Random(seed).shuffle(windows)
    return windows


@dataclass
class ModelLayer:
    """One model's gathered activations at one layer, per stage."""

    hooks: dict[str, str]
    moments: dict[str, Moments] = field(default_factory=dict)
    sample: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    sampled: int = 0


@dataclass
class LayerPair:
    """Layer L of model A against layer L of model B."""

    same_tokens: PairSums
    shuffled: PairSums
    models: tuple[ModelLayer, ModelLayer]


@dataclass
class Gathered:
    layers: dict[int, LayerPair]
    tokens: int = 0
    windows: int = 0


def gather(
    a: LoadedModel,
    b: LoadedModel,
    windows: list[list[int]],
    layers: Sequence[int],
    batch_size: int,
    sample_tokens: int,
    on_progress: Callable[[int], None] | None = None,
) -> Gathered:
    """Both models over `windows` in batches. Same-token sums pair A and B on each batch; the
    shuffled sums pair A's batch with B's previous batch (other windows, same positions), the
    chance level a best match must beat."""
    device = a.device
    gathered = Gathered(
        layers={
            layer: LayerPair(
                same_tokens=PairSums(a.d_mlp, b.d_mlp, device),
                shuffled=PairSums(a.d_mlp, b.d_mlp, device),
                models=(ModelLayer(stage_hooks(a, layer)), ModelLayer(stage_hooks(b, layer))),
            )
            for layer in layers
        }
    )
    previous_b: dict[int, torch.Tensor] = {}
    for batch in _batches(windows, batch_size):
        acts = [activation_stages(model, batch, layers) for model in (a, b)]
        for layer, pair in gathered.layers.items():
            x, y = acts[0][layer]["neuron"], acts[1][layer]["neuron"].to(device)
            pair.same_tokens.update(x, y)
            if layer in previous_b:
                pair.shuffled.update(x, previous_b[layer][: x.shape[0]])
            previous_b[layer] = y
            for model_layer, model_acts in zip(pair.models, acts, strict=True):
                _summarise(model_layer, model_acts[layer], sample_tokens)
        gathered.tokens += sum(len(w) for w in batch)
        gathered.windows += len(batch)
        if on_progress is not None:
            on_progress(gathered.tokens)
    return gathered


def _batches(windows: list[list[int]], size: int) -> Iterator[list[list[int]]]:
    for start in range(0, len(windows), size):
        yield windows[start : start + size]


def _summarise(target: ModelLayer, stages: dict[str, torch.Tensor], sample_tokens: int) -> None:
    """Exact moments over every token; the first `sample_tokens` tokens kept for histograms and
    near-zero shares (the windows come in random order, so these are a random sample)."""
    take = max(0, sample_tokens - target.sampled)
    for stage, x in stages.items():
        x = x.contiguous()
        if stage not in target.moments:
            target.moments[stage] = Moments(x.shape[1], x.device)
        scratch = (torch.empty_like(x), torch.empty_like(x))
        target.moments[stage].update(x, x.amin(dim=0), x.amax(dim=0), scratch)
        if take:
            target.sample.setdefault(stage, []).append(x[:take].cpu())
    target.sampled += min(take, next(iter(stages.values())).shape[0])


NEAR_ZERO = 0.05  # |a| at most this share of the neuron's max |a| counts as near zero
HISTOGRAM_BINS = 80


def compare_layer(layer: int, pair: LayerPair, a: str, b: str) -> LayerComparison:
    """The layer's records: best matches both ways and each model's stage distributions."""
    r, shuffled = pair.same_tokens.correlation(), pair.shuffled.correlation()
    a_to_b = best_matches(a, b, r, shuffled)
    b_to_a = best_matches(b, a, r.T, shuffled.T)
    mutual = sum(1 for n, m in enumerate(a_to_b.match) if m is not None and b_to_a.match[m] == n)
    return LayerComparison(
        layer=layer,
        a_to_b=a_to_b,
        b_to_a=b_to_a,
        mutual=mutual,
        distributions=[
            stage_distributions(name, side) for name, side in zip((a, b), pair.models, strict=True)
        ],
    )


def best_matches(source: str, target: str, r: torch.Tensor, shuffled: torch.Tensor) -> BestMatches:
    """Per row of r, the column of largest r (NaN never wins; a row of NaN has no match)."""
    best_r, match = torch.nan_to_num(r, nan=-math.inf).max(dim=1)
    best_shuffled = torch.nan_to_num(shuffled, nan=-math.inf).amax(dim=1)
    found = torch.isfinite(best_r)
    real = best_r[found]
    chance = best_shuffled[torch.isfinite(best_shuffled)]
    p99 = float(chance.quantile(0.99)) if chance.numel() else None
    return BestMatches(
        source=source,
        target=target,
        match=[
            int(m) if ok else None for m, ok in zip(match.tolist(), found.tolist(), strict=True)
        ],
        r=[float(v) if math.isfinite(v) else None for v in best_r.tolist()],
        shuffled_r=[float(v) if math.isfinite(v) else None for v in best_shuffled.tolist()],
        median_r=float(real.median()) if real.numel() else None,
        shuffled_median_r=float(chance.median()) if chance.numel() else None,
        shuffled_p99=p99,
        above_shuffled_p99=float((real > p99).double().mean())
        if p99 is not None and real.numel()
        else 0.0,
        same_index=float(
            (match[found] == torch.arange(r.shape[0], device=r.device)[found]).double().mean()
        )
        if real.numel()
        else 0.0,
    )


def stage_distributions(model: str, side: ModelLayer) -> ModelLayerDistributions:
    stages = []
    for stage, hook in side.hooks.items():
        m = side.moments[stage].state()
        count = float(m["count"])
        m2 = m["m2"]
        constant = m2 <= 1e-12 * max(count, 1.0)
        safe = torch.where(constant, torch.ones_like(m2), m2)
        skew = math.sqrt(count) * m["m3"] / safe**1.5
        kurt = count * m["m4"] / (safe * safe) - 3.0
        sample = torch.cat(side.sample[stage]).double()
        scale = sample.abs().amax(dim=0)
        near = (sample.abs() <= NEAR_ZERO * scale).double().mean(dim=0)
        low, high = float(sample.min()), float(sample.max())
        counts = torch.histc(sample, bins=HISTOGRAM_BINS, min=low, max=high)
        stages.append(
            StageDistribution(
                stage=stage,
                hook=hook,
                kurtosis=_values(kurt, constant),
                skewness=_values(skew, constant),
                near_zero=near.tolist(),
                histogram=Histogram(low=low, high=high, counts=[int(c) for c in counts.tolist()]),
            )
        )
    return ModelLayerDistributions(model=model, stages=stages)


def _values(values: torch.Tensor, undefined: torch.Tensor) -> list[float | None]:
    return [
        None if u else float(v) for v, u in zip(values.tolist(), undefined.tolist(), strict=True)
    ]


def compare_models(
    a: LoadedModel,
    b: LoadedModel,
    windows: list[list[int]],
    layers: Sequence[int],
    settings: CompareSettings,
    catalogue: Catalogue | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> CompareReport:
    """The whole comparison: gather over `windows`, then the records, with label rates and
    label agreement when a catalogue is given."""
    gathered = gather(
        a, b, windows, layers, settings.batch_size, settings.sample_tokens, on_progress
    )
    compared = [
        compare_layer(layer, pair, a.name, b.name) for layer, pair in gathered.layers.items()
    ]
    rates = None
    if catalogue is not None:
        (rates_a, labels_a, scores_a), (rates_b, labels_b, scores_b) = (
            catalogue_labels(catalogue, model.name, list(layers), model.d_mlp) for model in (a, b)
        )
        for side, (rate, scores) in enumerate(((rates_a, scores_a), (rates_b, scores_b))):
            rate.kurtosis_score_spearman, rate.kurtosis_score_neurons = kurtosis_score_correlation(
                compared, side, scores
            )
        rates = [rates_a, rates_b]
        for layer in compared:
            layer.agreement = label_agreement(layer, labels_a, labels_b, settings.seed)
    first = next(iter(gathered.layers.values()))
    return CompareReport(
        models=[a.record(), b.record()],
        dataset=settings.dataset,
        ctx=settings.ctx,
        seed=settings.seed,
        tokens=gathered.tokens,
        windows=gathered.windows,
        shuffled_tokens=int(float(first.shuffled.count)),
        sample_tokens=first.models[0].sampled,
        layers=compared,
        label_rates=rates,
    )


@dataclass(frozen=True)
class CompareSettings:
    dataset: str
    ctx: int
    seed: int
    batch_size: int
    sample_tokens: int
