"""Facts about a neuron read off the weights alone (no data needed)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from labeller.model.loading import LoadedModel
from labeller.records import OutputToken, WeightFacts

TOP_OUTPUT_TOKENS = 10


def float32_values(values: torch.Tensor | np.ndarray) -> list[float]:
    """Each float32 as the shortest decimal that reads back as the same float32: the float64
    digits past float32's precision are noise, and cost a catalogue ~160 bytes a neuron in the
    output tokens' JSON. (numpy's str of a float32 array gives each value's shortest decimal,
    as str of a float32 scalar does.)"""
    return [float(text) for text in np.asarray(values, dtype=np.float32).ravel().astype(str)]


@dataclass(frozen=True)
class LayerWeightFacts:
    """A layer's weight facts as columns: a scan writes thousands of neurons, and a record per
    output token cost a quarter of its catalogue write. The output tokens' texts are flat,
    neuron by neuron, their weights float32 [neurons, k]."""

    cosine: list[float]
    positive_tokens: list[str]
    positive_weights: np.ndarray
    negative_tokens: list[str]
    negative_weights: np.ndarray

    def record(self, neuron: int) -> WeightFacts:
        return WeightFacts(
            w_in_w_out_cosine=self.cosine[neuron],
            top_positive_tokens=_output_tokens(self.positive_tokens, self.positive_weights, neuron),
            top_negative_tokens=_output_tokens(self.negative_tokens, self.negative_weights, neuron),
        )


def _output_tokens(texts: list[str], weights: np.ndarray, neuron: int) -> list[OutputToken]:
    k = weights.shape[1]
    return [
        OutputToken(token=text, weight=weight)
        for text, weight in zip(
            texts[neuron * k : (neuron + 1) * k], float32_values(weights[neuron]), strict=True
        )
    ]


def layer_weight_facts(model: LoadedModel, layer: int) -> LayerWeightFacts:
    """Per neuron: cos(w_in, w_out) and the tokens its output most promotes and suppresses,
    each a float32 (the cosine as its shortest decimal, `float32_values`).

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
    return LayerWeightFacts(
        cosine=float32_values(cosine.cpu()),
        positive_tokens=model.token_strings(top_ids.flatten().tolist()),
        positive_weights=top_values.cpu().numpy(),
        negative_tokens=model.token_strings(bottom_ids.flatten().tolist()),
        negative_weights=bottom_values.cpu().numpy(),
    )
