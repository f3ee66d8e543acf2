"""Weight facts: stored at float32 precision, the precision they are computed in."""

from __future__ import annotations

import numpy as np
import torch

from labeller.model.loading import load_model
from labeller.model.weights import float32_values, layer_weight_facts


def shortest(value: float) -> float:
    return float(str(np.float32(value)))


def test_float32_values_read_back_as_the_same_float32_and_are_short():
    rng = np.random.default_rng(0)
    values = [*rng.standard_normal(2000).astype(np.float32).tolist(), 1e-30, -7e20, 0.0, 1e16]
    found = float32_values(torch.tensor(values, dtype=torch.float32))
    assert found == [shortest(v) for v in values]
    for short, value in zip(found, values, strict=True):
        assert np.float32(short) == np.float32(value)
        assert len(repr(short)) <= len(repr(value))


def test_output_token_weights_are_w_out_through_the_unembedding_in_float32():
    model = load_model("demo-gelu-1l", device="cpu")
    facts = layer_weight_facts(model, 0).record(7)
    with torch.inference_mode():
        logits = (model.bridge.W_out[0].float() @ model.bridge.W_U.float())[7]
    top = logits.topk(10).values.tolist()
    assert [np.float32(t.weight) for t in facts.top_positive_tokens] == [np.float32(v) for v in top]
    bottom = logits.topk(10, largest=False).values.tolist()
    assert [np.float32(t.weight) for t in facts.top_negative_tokens] == [
        np.float32(v) for v in bottom
    ]


def test_the_layer_columns_hold_each_value_as_its_shortest_float32_decimal():
    model = load_model("demo-gelu-1l", device="cpu")
    facts = layer_weight_facts(model, 0)
    with torch.inference_mode():
        w_in, w_out = model.bridge.W_in[0].float(), model.bridge.W_out[0].float()
        cosine = torch.nn.functional.cosine_similarity(w_in.T, w_out, dim=1).tolist()
    assert facts.cosine == [shortest(c) for c in cosine]
    weights = [t.weight for t in facts.record(5).top_negative_tokens]
    assert weights == [shortest(w) for w in weights]
    assert facts.positive_weights.shape == (model.d_mlp, 10)
    assert len(facts.positive_tokens) == model.d_mlp * 10
