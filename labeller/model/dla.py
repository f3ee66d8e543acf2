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
from dataclasses import dataclass
from typing import Any

import torch

from labeller.model.activations import batch_inputs, neuron_activations
from labeller.model.loading import LoadedModel

POST_HOOK = "blocks.{layer}.mlp.hook_post"
FINAL_SCALE_HOOK = "ln_final.hook_scale"
# Per-vocabulary tables (DlaReadout) are kept while all of them together fit in this many bytes.
TABLE_BUDGET_BYTES = 256 * 2**20


def unembed_directions(model: LoadedModel) -> torch.Tensor:
    """gamma * W_U, [d_model, d_vocab]: what the final LayerNorm's output is read through."""
    bridge = model.bridge
    w_u = bridge.W_U.float()
    gamma = getattr(bridge.ln_final, "weight", None)
    return w_u if gamma is None else w_u * gamma.float()[:, None]


def centred_w_out(model: LoadedModel, layer: int) -> torch.Tensor:
    """w_out [d_mlp, d_model] with each row's mean removed where the final norm centres (a
    LayerNorm; an RMSNorm does not centre)."""
    w_out = model.mlp_weights(layer)[1].float().contiguous()
    if str(model.bridge.cfg.normalization_type or "").startswith("RMS"):
        return w_out
    return w_out - w_out.mean(dim=1, keepdim=True)


@dataclass
class DlaInputs:
    """What one forward pass leaves for DLA, per batch: per layer the MLP hidden state W_out
    reads, [B, T, d_mlp]; the final norm's inverse scale [B, T, 1] (None without a final norm);
    and each position's next token [B, T] (the last column repeats the last token: it has no
    next token, its DLA is NaN)."""

    post: dict[int, torch.Tensor]
    inverse_scale: torch.Tensor | None
    next_ids: torch.Tensor


class DlaReadout:
    """The weights DLA reads a neuron's output through, prepared once (per scan) instead of per
    batch: gamma * W_U as contiguous rows [d_vocab, d_model] and each layer's centred w_out,
    transposed [d_model, d_mlp]. Where they fit TABLE_BUDGET_BYTES and the scan reads at least
    d_vocab tokens, also each layer's table [d_vocab, d_mlp] = their product, every (next token,
    neuron) pair's factor: a batch then costs a row gather instead of a
    [tokens, d_model] x [d_model, d_mlp] product (building the table costs d_vocab such rows).
    Built from the model's weights as they are now: a changed model needs a new readout."""

    def __init__(
        self, model: LoadedModel, layers: Sequence[int], tokens: int | None = None
    ) -> None:
        self.model = model
        with torch.inference_mode():
            self.rows = unembed_directions(model).T.contiguous()
            self.w_out = {layer: centred_w_out(model, layer).T.contiguous() for layer in layers}
            vocab = self.rows.shape[0]
            table_bytes = 4 * vocab * model.d_mlp * len(self.w_out)
            worth_it = tokens is None or tokens >= vocab
            self.tables = (
                {layer: self.rows @ w for layer, w in self.w_out.items()}
                if worth_it and table_bytes <= TABLE_BUDGET_BYTES
                else {}
            )

    def dla(self, inputs: DlaInputs, layer: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """The layer's DLA [B, T, d_mlp], NaN in the last column (written into `out`, a
        contiguous buffer of at least B * T * d_mlp floats, when given: the scan reuses one)."""
        post = inputs.post[layer]
        batch, width, n = post.shape
        flat_ids = inputs.next_ids.reshape(-1)
        if out is None:
            out = torch.empty((batch * width, n), device=post.device)
        flat = out.view(-1)[: batch * width * n].view(batch * width, n)
        with torch.inference_mode():
            table = self.tables.get(layer)
            if table is not None:
                torch.index_select(table, 0, flat_ids, out=flat)
            else:
                torch.mm(self.rows[flat_ids], self.w_out[layer], out=flat)
            result = flat.view(batch, width, n)
            result.mul_(post)
            if inputs.inverse_scale is not None:
                result.mul_(inputs.inverse_scale)
            result[:, -1, :] = float("nan")
        return result


def neuron_activations_for_dla(
    model: LoadedModel, input_ids: torch.Tensor, layers: Sequence[int]
) -> tuple[dict[int, torch.Tensor], DlaInputs]:
    """One full forward pass: per layer the neuron activations [batch, text tokens, d_mlp] (as
    `neuron_activations` gives them) and what DlaReadout.dla needs to compute their DLA."""
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
        text = input_ids[:, skip:]
        next_ids = torch.cat([text[:, 1:], text[:, -1:]], dim=1)
        inverse_scale = 1.0 / scale[0] if scale else None
    return acts, DlaInputs(post, inverse_scale, next_ids)


def neuron_activations_and_dla(
    model: LoadedModel,
    input_ids: torch.Tensor,
    layers: Sequence[int],
    readout: DlaReadout | None = None,
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """One full forward pass: per layer the neuron activations [batch, text tokens, d_mlp] (as
    `neuron_activations` gives them) and their DLA, same shape, NaN at each row's last position
    (and wherever the row is padding: the caller masks those). `readout`: one prepared for this
    model (else one is made for these tokens)."""
    if readout is None:
        readout = DlaReadout(model, layers, tokens=input_ids.numel())
    elif readout.model is not model:
        raise ValueError("this DlaReadout was prepared for another model")
    acts, inputs = neuron_activations_for_dla(model, input_ids, layers)
    return acts, {layer: readout.dla(inputs, layer) for layer in layers}


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
