"""Facts about a neuron read off the weights alone (no data needed)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from labeller.model.loading import LoadedModel
from labeller.records import OutputToken, WeightFacts

TOP_OUTPUT_TOKENS = 10

TokenWeights = list[tuple[str, float]]


def float32_values(values: torch.Tensor) -> list[float]:
    """Each float32 as the shortest decimal that reads back as the same float32: the float64
    digits past float32's precision are noise, and cost a catalogue ~160 bytes a neuron in the
    output tokens' JSON. (numpy's str of a float32 array gives each value's shortest decimal,
    as str of a float32 scalar does.)"""
    return [float(text) for text in values.numpy().astype(np.float32).ravel().astype(str)]


@dataclass(frozen=True)
class LayerWeightFacts:
    """A layer's weight facts as columns, one entry per neuron: a scan writes thousands of
    neurons, and a record per output token cost a quarter of its catalogue write."""

    cosine: list[float]
    top_positive_tokens: list[TokenWeights]
    top_negative_tokens: list[TokenWeights]

    def record(self, neuron: int) -> WeightFacts:
        return WeightFacts(
            w_in_w_out_cosine=self.cosine[neuron],
            top_positive_tokens=[
                OutputToken(token=t, weight=w) for t, w in self.top_positive_tokens[neuron]
            ],
            top_negative_tokens=[
                OutputToken(token=t, weight=w) for t, w in self.top_negative_tokens[neuron]
            ],
        )


def layer_weight_facts(model: LoadedModel, layer: int) -> LayerWeightFacts:
    """Per neuron: cos(w_in, w_out) and the tokens its output most promotes and suppresses,
    each a float32 as its shortest decimal (`float32_values`).

    A strongly negative cosine marks the seed essay's memory-management neurons (erasing what
    they read); a strongly positive one marks signal-boosting neurons.
    """
    bridge = model.bridge
    with torch.inference_mode():
        w_in, w_out = (w.float().contiguous() for w in model.mlp_weights(layer))
        w_u = bridge.W_U.float()  # [d_model, d_vocab]
        cosine = torch.nn.functional.cosine_similarity(w_in.T, w_out, dim=1)
        logits = w_out @ w_u  # [d_mlp, d_vocab]
        k = min(TOP_OUTPUT_TOKENS, logits.shape[1])
        top_values, top_ids = logits.topk(k, dim=1)
        bottom_values, bottom_ids = logits.topk(k, dim=1, largest=False)

    def pairs(ids: torch.Tensor, values: torch.Tensor) -> list[TokenWeights]:
        texts = model.token_strings(ids.flatten().tolist())
        weights = float32_values(values.cpu())
        flat = list(zip(texts, weights, strict=True))
        return [flat[start : start + k] for start in range(0, len(flat), k)]

    return LayerWeightFacts(
        cosine=float32_values(cosine.cpu()),
        top_positive_tokens=pairs(top_ids, top_values),
        top_negative_tokens=pairs(bottom_ids, bottom_values),
    )
