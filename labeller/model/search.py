"""Search across neurons: which neurons fire most on a text, and how one neuron ranks in its layer.

The "interactive Neuroscope" question run backwards. One forward pass over the text captures
every asked-for layer's neuron activations; the ranking (overall and per token) is done in torch,
so only the few neurons shown are ever turned into Python objects.

`ranks_in_layer` answers the seed essay's "is this the most active neuron on its max token?":
for each (window, position) the neuron's rank among all neurons of its layer at that token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from labeller.model.activations import batch_inputs, neuron_activations
from labeller.model.loading import LoadedModel
from labeller.model.perturb import _check_lengths


@dataclass(frozen=True)
class NeuronHit:
    """One neuron's activation at one token of the searched text.

    `relative` is the activation as a share of the neuron's scanned max (None when no positive
    max is known for it).
    """

    layer: int
    neuron: int
    position: int
    activation: float
    relative: float | None


@dataclass(frozen=True)
class NeuronSearch:
    """The neurons that fire most on a text: `overall` ranks each neuron once, by its largest
    value over the text's tokens; `per_token[i]` ranks the neurons at token i; `traces` holds
    every found neuron's activation on each token of the text, by (layer, neuron)."""

    layers: list[int]
    neurons_searched: int
    overall: list[NeuronHit]
    per_token: list[list[NeuronHit]]
    relative: bool
    traces: dict[tuple[int, int], list[float]]


def search_neurons(
    model: LoadedModel,
    token_ids: Sequence[int],
    layers: Sequence[int],
    *,
    top: int = 50,
    per_token: int = 5,
    scale: Mapping[int, torch.Tensor | Sequence[float]] | None = None,
    relative: bool = False,
) -> NeuronSearch:
    """Run the text once and rank every neuron of `layers` by its activation on it.

    `scale` (per layer, each neuron's scanned max) gives each hit its share of its own max.
    With `relative`, neurons are ranked by that share instead, so a neuron that rarely fires
    stands out when it does; neurons whose max is not positive are then left out (they never
    fire in the scan).
    """
    if relative and scale is None:
        raise ValueError("ranking relative to each neuron's max needs the maxima (scale)")
    ids = [int(i) for i in token_ids]
    _check_lengths(model, [ids])
    layers = sorted(set(layers))
    if not layers:
        raise ValueError("no layers to search")
    batch, _ = batch_inputs(model, [ids])
    captured = neuron_activations(model, batch, layers)
    # [tokens, layers * d_mlp]: neuron j of layer index l is column l * d_mlp + j.
    acts = torch.cat([captured[layer][0] for layer in layers], dim=1).cpu()
    d_mlp = captured[layers[0]].shape[-1]
    keys = acts
    shares: torch.Tensor | None = None
    if scale is not None:
        maxes = torch.cat(
            [torch.as_tensor(scale[layer], dtype=torch.float32).reshape(-1) for layer in layers]
        )
        usable = torch.isfinite(maxes) & (maxes > 0)
        shares = torch.where(usable, acts / maxes.clamp_min(1e-12), torch.tensor(float("nan")))
        if relative:
            keys = torch.where(usable, shares, torch.tensor(float("-inf")))

    def hit(position: int, column: int) -> NeuronHit:
        share = None if shares is None else float(shares[position, column])
        return NeuronHit(
            layer=layers[column // d_mlp],
            neuron=column % d_mlp,
            position=position,
            activation=float(acts[position, column]),
            relative=share if share is not None and share == share else None,
        )

    best, where = keys.max(dim=0)  # per neuron: its largest value over the text, and the token
    k = min(top, best.numel())
    order = best.topk(k).indices.tolist()
    overall = [hit(int(where[c]), c) for c in order if torch.isfinite(best[c])]
    k_token = min(per_token, keys.shape[1])
    token_top = keys.topk(k_token, dim=1).indices.tolist()
    tokens = [
        [hit(p, c) for c in row if torch.isfinite(keys[p, c])] for p, row in enumerate(token_top)
    ]
    index = {layer: i for i, layer in enumerate(layers)}
    found = sorted(
        {index[h.layer] * d_mlp + h.neuron for h in overall + [h for r in tokens for h in r]}
    )
    columns = acts[:, found].T.tolist() if found else []
    return NeuronSearch(
        layers=list(layers),
        neurons_searched=int(acts.shape[1]),
        overall=overall,
        per_token=tokens,
        relative=relative,
        traces={
            (layers[c // d_mlp], c % d_mlp): values
            for c, values in zip(found, columns, strict=True)
        },
    )


def ranks_in_layer(
    model: LoadedModel,
    windows: Sequence[Sequence[int]],
    positions: Sequence[int],
    layer: int,
    neuron: int,
    *,
    max_batch: int = 64,
) -> list[int]:
    """For each window, the neuron's rank (1 = the most active) among every neuron of its layer
    at `positions[i]`; ties count in the neuron's favour. Attention is causal, so each window
    runs only up to its position (about half the work of whole windows)."""
    if len(windows) != len(positions):
        raise ValueError("one position per window")
    _check_lengths(model, windows)
    out: list[int] = []
    for start in range(0, len(windows), max_batch):
        chunk = [
            list(window[: position + 1])
            for window, position in zip(
                windows[start : start + max_batch],
                positions[start : start + max_batch],
                strict=True,
            )
        ]
        ids, _ = batch_inputs(model, chunk)
        acts = neuron_activations(model, ids, [layer])[layer].cpu()  # [batch, tokens, d_mlp]
        rows = torch.arange(len(chunk))
        at = acts[rows, torch.tensor(positions[start : start + max_batch])]  # [batch, d_mlp]
        mine = at[:, neuron : neuron + 1]
        out += ((at > mine).sum(dim=1) + 1).tolist()
    return [int(r) for r in out]
