"""DLA against a hand computation through the model's own weights."""

from __future__ import annotations

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
