"""An MLP layer's activations at each stage of its computation, for comparing models and their
distributions (the seed essay's "pre and post activation for GELU, pre, mid and post for SoLU",
and SoLU's LayerNorm scale)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from labeller.model.activations import batch_inputs, neuron_activations
from labeller.model.loading import LoadedModel

# Activation stages, in the order the MLP computes them. "neuron" is what labeller scans (GELU:
# after the GELU; SoLU: after the softmax, before its LayerNorm); "post" is the MLP's hidden
# state as W_out reads it (for GELU the same as "neuron", so not gathered twice).
STAGE_HOOKS = {
    "pre": "blocks.{layer}.mlp.hook_pre",
    "post": "blocks.{layer}.mlp.hook_post",
    "ln_scale": "blocks.{layer}.mlp.ln.hook_scale",
}
STAGES = ("pre", "neuron", "post", "ln_scale")


def stage_hooks(model: LoadedModel, layer: int) -> dict[str, str]:
    """The model's hook per stage (stages it lacks, like GELU's LayerNorm scale, left out)."""
    neuron = model.neuron_hook(layer)
    found = {"neuron": neuron}
    for stage, template in STAGE_HOOKS.items():
        name = template.format(layer=layer)
        if name in model.bridge.hook_dict and name != neuron:
            found[stage] = name
    return {stage: found[stage] for stage in STAGES if stage in found}


def activation_stages(
    model: LoadedModel, batch: list[list[int]], layers: Sequence[int]
) -> dict[int, dict[str, torch.Tensor]]:
    """Per layer and stage, activations [real tokens, width] (the LayerNorm scale has width 1)."""
    ids, mask = batch_inputs(model, batch)
    skip = 1 if model.bos_id is not None else 0
    out: dict[int, dict[str, torch.Tensor]] = {layer: {} for layer in layers}

    def capture(layer: int, stage: str) -> Callable[..., None]:
        def hook(activation: torch.Tensor, hook: Any) -> None:
            out[layer][stage] = activation[:, skip:, :][mask].float()

        return hook

    extra = [
        (name, capture(layer, stage))
        for layer in layers
        for stage, name in stage_hooks(model, layer).items()
        if stage != "neuron"
    ]
    neurons = neuron_activations(model, ids, layers, extra_hooks=extra)
    for layer in layers:
        out[layer]["neuron"] = neurons[layer][mask]
    return out
