"""DLA against a hand computation through the model's own weights."""

from __future__ import annotations

import pytest
import torch

from labeller.model.activations import batch_inputs
from labeller.model.dla import trace_dla


@torch.inference_mode()
def test_dla_matches_hand_computation(tiny_model):
    model = tiny_model
    bridge = model.bridge
    text = model.encode("the cat sat on the mat and then the dog sat on the cat")
    layer = 1
    acts, dla = trace_dla(model, text, layer)

    ids, _ = batch_inputs(model, [text])
    logits, cache = bridge.run_with_cache(ids)
    skip = 1  # the tiny tokenizer has a BOS
    post = cache[f"blocks.{layer}.mlp.hook_post"][0, skip:].float()
    resid = cache["ln_final.hook_in"][0, skip:].float()
    eps = float(bridge.cfg.eps)
    centred = resid - resid.mean(dim=-1, keepdim=True)
    scale = torch.sqrt((centred**2).mean(dim=-1, keepdim=True) + eps)
    gamma = bridge.ln_final.weight.float()
    beta = bridge.ln_final.bias.float()
    w_u = bridge.W_U.float()
    # The hand-made final LayerNorm reproduces the model's logits: the scale is the model's.
    hand_logits = (centred / scale * gamma + beta) @ w_u + bridge.b_U.float()
    torch.testing.assert_close(hand_logits, logits[0, skip:].float(), rtol=1e-4, atol=1e-4)

    w_out = bridge.W_out[layer].float()
    for t in range(len(text) - 1):
        target = w_u[:, text[t + 1]]
        for n in (0, 7, 31, model.d_mlp - 1):
            w = w_out[n] - w_out[n].mean()
            expected = float(post[t, n] * (w * gamma) @ target / scale[t, 0])
            assert abs(float(dla[t, n]) - expected) <= 1e-4 * max(1.0, abs(expected))
    assert torch.isnan(dla[-1]).all()  # the last token has no next token in the text
    assert acts.shape == dla.shape == (len(text), model.d_mlp)


@torch.inference_mode()
def test_dla_of_a_layer_sums_to_its_share_of_the_logit(tiny_model):
    """Summed over neurons, DLA is the MLP's (bias-free) output read through the frozen final
    LayerNorm: what TransformerLens's decomposition gives for the correct token."""
    model = tiny_model
    bridge = model.bridge
    text = model.encode("a b c d e f g the cat")
    layer = 0
    _, dla = trace_dla(model, text, layer)
    ids, _ = batch_inputs(model, [text])
    _, cache = bridge.run_with_cache(ids)
    mlp_out = cache[f"blocks.{layer}.hook_mlp_out"][0, 1:].float() - bridge.b_out[layer].float()
    scale = cache["ln_final.hook_scale"][0, 1:].float()
    centred = mlp_out - mlp_out.mean(dim=-1, keepdim=True)
    direct = (centred / scale * bridge.ln_final.weight.float()) @ bridge.W_U.float()
    for t in range(len(text) - 1):
        expected = float(direct[t, text[t + 1]])
        assert abs(float(dla[t].sum()) - expected) <= 1e-4 * max(1.0, abs(expected))


@torch.inference_mode()
def test_prepared_readout_equals_the_weights_and_its_table_equals_the_product(
    tiny_model, monkeypatch
):
    """A scan prepares DLA's weights once (DlaReadout); they must be the model's own, and its
    per-vocabulary table must give what the direct product gives, padding and all."""
    from labeller.model import dla as dla_module

    model = tiny_model
    layers = [0, 1]
    texts = [model.encode(t) for t in ("the cat sat on the mat", "a b c", "dog and cat and mat")]
    ids, mask = batch_inputs(model, texts)
    table = dla_module.DlaReadout(model, layers)  # tokens unknown: a long scan, tables kept
    product = dla_module.DlaReadout(model, layers, tokens=1)  # fewer tokens than the vocabulary
    monkeypatch.setattr(dla_module, "TABLE_BUDGET_BYTES", 0)
    over_budget = dla_module.DlaReadout(model, layers)
    assert set(table.tables) == set(layers)
    assert product.tables == {} and over_budget.tables == {}
    assert torch.equal(table.rows, dla_module.unembed_directions(model).T)
    for layer in layers:
        assert torch.equal(table.w_out[layer], dla_module.centred_w_out(model, layer).T)

    acts_t, by_table = dla_module.neuron_activations_and_dla(model, ids, layers, readout=table)
    acts_p, by_product = dla_module.neuron_activations_and_dla(model, ids, layers, product)
    _, inputs = dla_module.neuron_activations_for_dla(model, ids, layers)
    for layer in layers:
        assert torch.equal(acts_t[layer], acts_p[layer])
        torch.testing.assert_close(by_table[layer][:, :-1], by_product[layer][:, :-1])
        assert torch.isnan(by_table[layer][:, -1]).all()
        # into a reused (larger, stale) buffer, as the scan calls it: the same values
        for readout, fresh in ((table, by_table[layer]), (product, by_product[layer])):
            buffer = torch.full((ids.numel() * model.d_mlp,), 7.0)
            into = readout.dla(inputs, layer, out=buffer)
            assert into.data_ptr() == buffer.data_ptr()
            torch.testing.assert_close(into, fresh, equal_nan=True)
        # each real row equals that text traced alone (its own next tokens, no padding)
        for row, text in enumerate(texts):
            alone = trace_dla(model, text, layer)[1]
            real = int(mask[row].sum())
            torch.testing.assert_close(by_table[layer][row, : real - 1], alone[:-1])


def test_a_readout_is_refused_for_another_model(tiny_model, tiny_model_dir):
    from labeller.model.dla import DlaReadout, neuron_activations_and_dla
    from labeller.model.loading import load_model

    other = load_model(str(tiny_model_dir), device="cpu")
    ids, _ = batch_inputs(tiny_model, [tiny_model.encode("the cat")])
    with pytest.raises(ValueError, match="another model"):
        neuron_activations_and_dla(other, ids, [0], readout=DlaReadout(tiny_model, [0]))
