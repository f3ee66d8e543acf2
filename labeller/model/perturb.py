"""Perturbation experiments: which input tokens does one neuron's activation depend on?

The seed essay's falsification checklist, as pure functions: delete each earlier token, resample
each token, add noise to each token's embedding, insert a random token after each position, and
truncate to the last k tokens. Each experiment builds all its perturbed inputs at once and runs
them as one batched forward pass (in chunks of `max_batch`), measuring the neuron at the target
position (default: the position of the maximum activation). Randomness comes from a seeded
generator, so the same call gives the same answer.

Attention is causal, so only tokens up to the target matter: inputs are cut after the target.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from labeller.model.activations import batch_inputs, neuron_activations
from labeller.model.loading import LoadedModel
from labeller.model.perturb_kinds import SAMPLES, PerturbationKind

# The token embedding's output (before positions are added). In TransformerLens 4.3's bridge both
# names are the same HookPoint and fire on native and Hugging Face models alike; the alias is kept
# as a fallback for bridges that only register one of them.
EMBED_HOOKS = ("embed.hook_out", "hook_embed")


@dataclass(frozen=True)
class Perturbation:
    """How the target activation moved under one kind of perturbation, position by position.

    `positions` are the perturbed token positions (for truncation: k, the tokens kept);
    `values` the mean target activation after perturbing there, `spread` its standard deviation
    over the `samples` random draws per position (1 and 0 where the experiment is deterministic).
    """

    kind: PerturbationKind
    target: int
    base: float
    positions: list[int]
    values: list[float]
    spread: list[float]
    samples: int = 1

    @property
    def deltas(self) -> list[float]:
        return [value - self.base for value in self.values]


def trace_neuron(
    model: LoadedModel, token_ids: Sequence[int], layer: int, neuron: int
) -> list[float]:
    """The neuron's activation on every token of one text, exactly as the scan measures it."""
    return trace_many(model, [token_ids], layer, neuron)[0]


def trace_many(
    model: LoadedModel,
    texts: Sequence[Sequence[int]],
    layer: int,
    neuron: int,
    *,
    max_batch: int = 64,
) -> list[list[float]]:
    """The neuron's activations on several texts, batched (right padding leaves them exact)."""
    _check_lengths(model, texts)
    out: list[list[float]] = []
    for start in range(0, len(texts), max_batch):
        chunk = texts[start : start + max_batch]
        ids, _ = batch_inputs(model, chunk)
        acts = _neuron_acts(model, ids, layer, neuron, [])
        out += [acts[row, : len(text)].tolist() for row, text in enumerate(chunk)]
    return out


def delete_each(
    model: LoadedModel,
    token_ids: Sequence[int],
    layer: int,
    neuron: int,
    target: int | None = None,
    *,
    max_batch: int = 256,
) -> Perturbation:
    """Drop each token before the target in turn: which earlier tokens does it need?"""
    ids, target, base = _prepare(model, token_ids, layer, neuron, target)
    inputs = [ids[:p] + ids[p + 1 :] for p in range(target)]
    values = _at_targets(model, inputs, [target - 1] * target, layer, neuron, max_batch)
    return Perturbation(
        PerturbationKind.DELETE, target, base, list(range(target)), values, [0.0] * target
    )


def resample_each(
    model: LoadedModel,
    token_ids: Sequence[int],
    layer: int,
    neuron: int,
    target: int | None = None,
    *,
    samples: int = SAMPLES[PerturbationKind.RESAMPLE],
    seed: int = 0,
    max_batch: int = 256,
) -> Perturbation:
    """Replace each token up to the target by `samples` random vocabulary tokens in turn."""
    ids, target, base = _prepare(model, token_ids, layer, neuron, target)
    replacements = _random_tokens(model, (target + 1) * samples, seed)
    inputs = []
    for p in range(target + 1):
        for s in range(samples):
            changed = list(ids)
            changed[p] = replacements[p * samples + s]
            inputs.append(changed)
    values = _at_targets(model, inputs, [target] * len(inputs), layer, neuron, max_batch)
    means, spreads = _mean_spread(values, samples)
    return Perturbation(
        PerturbationKind.RESAMPLE, target, base, list(range(target + 1)), means, spreads, samples
    )


def noise_each(
    model: LoadedModel,
    token_ids: Sequence[int],
    layer: int,
    neuron: int,
    target: int | None = None,
    *,
    scale: float = 1.0,
    samples: int = SAMPLES[PerturbationKind.NOISE],
    seed: int = 0,
    max_batch: int = 256,
) -> Perturbation:
    """Add Gaussian noise to each token's embedding in turn (`samples` draws per token).

    The noise has `scale` times the standard deviation of the text's own token embeddings, so
    scale 1 is about as large as the embedding itself: enough to blur what the token is.
    """
    ids, target, base = _prepare(model, token_ids, layer, neuron, target)
    rows = (target + 1) * samples
    generator = torch.Generator().manual_seed(seed)
    d_model = int(model.bridge.cfg.d_model)
    noise = torch.randn((rows, d_model), generator=generator).to(model.device)
    positions = torch.arange(target + 1).repeat_interleave(samples)
    skip = 1 if model.bos_id is not None else 0
    hook_name = next((name for name in EMBED_HOOKS if name in model.bridge.hook_dict), None)
    if hook_name is None:
        raise ValueError(f"{model.name} has no token-embedding hook ({' or '.join(EMBED_HOOKS)})")
    values: list[float] = []
    for start in range(0, rows, max_batch):
        count = min(max_batch, rows - start)
        chunk_noise = noise[start : start + count]
        chunk_positions = positions[start : start + count].to(model.device) + skip

        def add_noise(
            embedding: torch.Tensor,
            hook: object,
            chunk_noise: torch.Tensor = chunk_noise,
            chunk_positions: torch.Tensor = chunk_positions,
        ) -> torch.Tensor:
            sigma = embedding[0, skip:].float().std()
            noisy = embedding.clone()
            batch_rows = torch.arange(len(chunk_positions))
            noisy[batch_rows, chunk_positions] += (scale * sigma * chunk_noise).to(embedding.dtype)
            return noisy

        batch, _ = batch_inputs(model, [ids] * count)
        acts = _neuron_acts(model, batch, layer, neuron, [(hook_name, add_noise)])
        values += acts[:, target].tolist()
    means, spreads = _mean_spread(values, samples)
    return Perturbation(
        PerturbationKind.NOISE, target, base, list(range(target + 1)), means, spreads, samples
    )


def insert_each(
    model: LoadedModel,
    token_ids: Sequence[int],
    layer: int,
    neuron: int,
    target: int | None = None,
    *,
    samples: int = SAMPLES[PerturbationKind.INSERT],
    seed: int = 0,
    max_batch: int = 256,
) -> Perturbation:
    """Insert a random token after each position before the target (`samples` draws each).

    When the longer input no longer fits the context, its first token is dropped.
    """
    ids, target, base = _prepare(model, token_ids, layer, neuron, target)
    limit = model.context_limit
    extra = _random_tokens(model, target * samples, seed)
    inputs, targets = [], []
    for p in range(target):
        for s in range(samples):
            longer = [*ids[: p + 1], extra[p * samples + s], *ids[p + 1 :]]
            cut = max(0, len(longer) - limit)
            inputs.append(longer[cut:])
            targets.append(target + 1 - cut)
    values = _at_targets(model, inputs, targets, layer, neuron, max_batch)
    means, spreads = _mean_spread(values, samples)
    return Perturbation(
        PerturbationKind.INSERT, target, base, list(range(target)), means, spreads, samples
    )


def truncate(
    model: LoadedModel,
    token_ids: Sequence[int],
    layer: int,
    neuron: int,
    target: int | None = None,
    *,
    max_batch: int = 256,
) -> Perturbation:
    """Keep only the last k tokens up to the target, for every k: how much context is needed?"""
    ids, target, base = _prepare(model, token_ids, layer, neuron, target)
    ks = list(range(1, target + 2))
    inputs = [ids[target + 1 - k :] for k in ks]
    values = _at_targets(model, inputs, [k - 1 for k in ks], layer, neuron, max_batch)
    return Perturbation(PerturbationKind.TRUNCATE, target, base, ks, values, [0.0] * len(ks))


Experiment = Callable[..., Perturbation]

EXPERIMENTS: dict[PerturbationKind, Experiment] = {
    PerturbationKind.DELETE: delete_each,
    PerturbationKind.RESAMPLE: resample_each,
    PerturbationKind.NOISE: noise_each,
    PerturbationKind.INSERT: insert_each,
    PerturbationKind.TRUNCATE: truncate,
}


def _prepare(
    model: LoadedModel, token_ids: Sequence[int], layer: int, neuron: int, target: int | None
) -> tuple[list[int], int, float]:
    """The input cut after the target, the target, and its unperturbed activation."""
    ids = [int(i) for i in token_ids]
    if not ids:
        raise ValueError("no tokens to perturb")
    _check_lengths(model, [ids])
    values = trace_neuron(model, ids, layer, neuron)
    if target is None:
        target = max(range(len(values)), key=values.__getitem__)
    if not 0 <= target < len(ids):
        raise ValueError(f"target position {target} is outside the text's {len(ids)} tokens")
    return ids[: target + 1], target, values[target]


def _check_lengths(model: LoadedModel, texts: Sequence[Sequence[int]]) -> None:
    limit = model.context_limit
    longest = max((len(t) for t in texts), default=0)
    if longest > limit:
        raise ValueError(f"text is {longest} tokens; {model.name} reads at most {limit}")
    if any(len(t) == 0 for t in texts):
        raise ValueError("an empty text has no activations")


def _neuron_acts(
    model: LoadedModel,
    input_ids: torch.Tensor,
    layer: int,
    neuron: int,
    extra_hooks: list[tuple[str, Callable[..., torch.Tensor | None]]],
) -> torch.Tensor:
    """[batch, text tokens] activations of one neuron (BOS dropped), float32 on the CPU."""
    acts = neuron_activations(model, input_ids, [layer], extra_hooks=extra_hooks)
    return acts[layer][:, :, neuron].cpu()


def _at_targets(
    model: LoadedModel,
    inputs: list[list[int]],
    targets: list[int],
    layer: int,
    neuron: int,
    max_batch: int,
) -> list[float]:
    values: list[float] = []
    for start in range(0, len(inputs), max_batch):
        chunk = inputs[start : start + max_batch]
        ids, _ = batch_inputs(model, chunk)
        acts = _neuron_acts(model, ids, layer, neuron, [])
        rows = torch.arange(len(chunk))
        values += acts[rows, torch.tensor(targets[start : start + max_batch])].tolist()
    return values


def _random_tokens(model: LoadedModel, count: int, seed: int) -> list[int]:
    """Uniform draws from the vocabulary, never a special token (BOS/EOS/PAD)."""
    special = set(model.tokenizer.all_special_ids or [])
    vocabulary = torch.tensor([i for i in range(int(model.bridge.cfg.d_vocab)) if i not in special])
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(vocabulary), (count,), generator=generator)
    return vocabulary[picks].tolist()


def _mean_spread(values: list[float], samples: int) -> tuple[list[float], list[float]]:
    if not values:
        return [], []
    grouped = torch.tensor(values).reshape(-1, samples)
    return grouped.mean(dim=1).tolist(), grouped.std(dim=1, correction=0).tolist()
