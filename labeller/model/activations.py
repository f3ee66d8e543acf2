"""Neuron activations for batches of token windows: the one forward pass scan and trace share."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from labeller.model.loading import LoadedModel


def batch_inputs(
    model: LoadedModel, windows: Sequence[Sequence[int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded model input (BOS first when the tokenizer has one) and a text-token mask.

    Causal attention means right padding never changes the activations of real tokens.
    """
    prefix = [model.bos_id] if model.bos_id is not None else []
    width = max(len(w) for w in windows)
    ids = torch.full((len(windows), len(prefix) + width), model.pad_id, dtype=torch.long)
    mask = torch.zeros((len(windows), width), dtype=torch.bool)
    for row, window in enumerate(windows):
        ids[row, : len(prefix) + len(window)] = torch.tensor([*prefix, *window])
        mask[row, : len(window)] = True
    return ids.to(model.device), mask.to(model.device)


def neuron_activations(
    model: LoadedModel,
    input_ids: torch.Tensor,
    layers: Sequence[int],
    keep: bool = True,
    extra_hooks: Sequence[tuple[str, Callable[..., torch.Tensor | None]]] = (),
    to_end: bool = False,
) -> dict[int, torch.Tensor]:
    """Activations [batch, text tokens, d_mlp] per layer, float32, BOS position dropped.

    `keep=False` runs the same hooked forward pass but keeps nothing (the benchmark's baseline);
    `extra_hooks` run first, e.g. to perturb embeddings; `to_end` runs the whole model (else it
    stops after the last layer asked for), for hooks on the final LayerNorm.
    """
    captured: dict[int, torch.Tensor] = {}
    skip = 1 if model.bos_id is not None else 0

    def capture(layer: int) -> Callable[..., None]:
        def hook(activation: torch.Tensor, hook: object) -> None:
            if keep:
                captured[layer] = activation[:, skip:, :].float()

        return hook

    hooks = [*extra_hooks, *((model.neuron_hook(layer), capture(layer)) for layer in layers)]
    last = max(layers) + 1
    stop = last if last < model.n_layers and not to_end else None
    with torch.inference_mode():
        model.bridge.run_with_hooks(
            input_ids, fwd_hooks=hooks, return_type=None, stop_at_layer=stop
        )
    return captured


def trace_activations(model: LoadedModel, token_ids: Sequence[int], layer: int) -> torch.Tensor:
    """One neuron layer's activations [tokens, d_mlp] on one text, exactly as the scan sees it."""
    ids, _ = batch_inputs(model, [token_ids])
    return neuron_activations(model, ids, [layer])[layer][0]
