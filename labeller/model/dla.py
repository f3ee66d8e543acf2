"""Direct logit attribution (DLA): a neuron's direct effect on the logit of the correct next token.

For token t of a window with next token v, neuron n of layer L contributes

    dla[t, n] = post[t, n] * ((w_out[n] - mean(w_out[n])) * gamma) . W_U[:, v] / scale[t]

where post is the MLP hidden state W_out reads (for GELU the neuron's activation; for SoLU the
activation after the MLP's own LayerNorm), gamma the final LayerNorm's weight and scale[t] that
LayerNorm's scale (the residual stream's standard deviation, plus epsilon) at token t (for an
RMSNorm w_out is not centred; without a final norm the scale is 1). This is
the TransformerLens convention: the final LayerNorm is linear once its scale is frozen at the
value the whole residual stream gave it, and its centring subtracts the mean of every
component, so w_out is centred. The bias terms (LayerNorm's beta, b_U) belong to no neuron and
are left out. Paths through later layers (the neuron's indirect effect) are not counted.

The last token of a window has no next token inside the window: it gets no DLA (NaN here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from labeller.model.activations import batch_inputs, neuron_activations
from labeller.model.loading import LoadedModel

POST_HOOK = "blocks.{layer}.mlp.hook_post"
FINAL_SCALE_HOOK = "ln_final.hook_scale"


def unembed_directions(model: LoadedModel) -> torch.Tensor:
    """gamma * W_U, [d_model, d_vocab]: what the final LayerNorm's output is read through."""
    bridge = model.bridge
    w_u = bridge.W_U.float()
    gamma = getattr(bridge.ln_final, "weight", None)
    return w_u if gamma is None else w_u * gamma.float()[:, None]


def centred_w_out(model: LoadedModel, layer: int) -> torch.Tensor:
    """w_out [d_mlp, d_model] with each row's mean removed where the final norm centres (a
    LayerNorm; an RMSNorm does not centre)."""
    w_out = model.bridge.W_out[layer].float()
    if str(model.bridge.cfg.normalization_type or "").startswith("RMS"):
        return w_out
    return w_out - w_out.mean(dim=1, keepdim=True)


def neuron_activations_and_dla(
    model: LoadedModel, input_ids: torch.Tensor, layers: Sequence[int]
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """One full forward pass: per layer the neuron activations [batch, text tokens, d_mlp] (as
    `neuron_activations` gives them) and their DLA, same shape, NaN at each row's last position
    (and wherever the row is padding: the caller masks those)."""
    skip = 1 if model.bos_id is not None else 0
    post: dict[int, torch.Tensor] = {}
    scale: list[torch.Tensor] = []

    def capture_post(layer: int) -> Callable[..., None]:
        def hook(activation: torch.Tensor, hook: Any) -> None:
            post[layer] = activation[:, skip:, :].float()

        return hook

    def capture_scale(activation: torch.Tensor, hook: Any) -> None:
        scale.append(activation[:, skip:, :].float())

    extra = [(POST_HOOK.format(layer=layer), capture_post(layer)) for layer in layers]
    if FINAL_SCALE_HOOK in model.bridge.hook_dict:  # a model without a final norm: scale 1
        extra.append((FINAL_SCALE_HOOK, capture_scale))
    acts = neuron_activations(model, input_ids, layers, extra_hooks=extra, to_end=True)
    with torch.inference_mode():
        directions = unembed_directions(model)
        text = input_ids[:, skip:]
        next_ids = text[:, 1:]  # [B, T-1]: the correct next token of every position but the last
        targets = directions[:, next_ids].permute(1, 2, 0)  # [B, T-1, d_model]
        inverse_scale = 1.0 / scale[0][:, :-1, :] if scale else 1.0  # [B, T-1, 1]
        dla: dict[int, torch.Tensor] = {}
        for layer in layers:
            per_token = targets @ centred_w_out(model, layer).T  # [B, T-1, d_mlp]
            out = torch.full_like(post[layer], float("nan"))
            out[:, :-1, :] = post[layer][:, :-1, :] * per_token * inverse_scale
            dla[layer] = out
    return acts, dla


def trace_dla(
    model: LoadedModel, token_ids: Sequence[int], layer: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One text's activations and DLA [tokens, d_mlp] for one layer, exactly as the scan sees
    them (the last token's DLA NaN)."""
    ids, _ = batch_inputs(model, [token_ids])
    acts, dla = neuron_activations_and_dla(model, ids, [layer])
    return acts[layer][0], dla[layer][0]


def window_dla(
    model: LoadedModel, token_ids: Sequence[int], layer: int, neuron: int
) -> tuple[list[float], list[float]]:
    """One window's activations and DLA of one neuron as plain lists, as `trace_dla` gives
    them (the last token's DLA NaN)."""
    acts, dla = trace_dla(model, token_ids, layer)
    return acts[:, neuron].tolist(), dla[:, neuron].tolist()
