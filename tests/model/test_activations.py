"""The scan's forward pass: the activations it captures, and where it stops."""

from __future__ import annotations

import pytest
import torch

from labeller.model.activations import batch_inputs, neuron_activations


def windows(seed: int, vocab: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in (9, 4, 9)]


@pytest.mark.parametrize("layers", [[0, 1], [0], [1]])
def test_activations_are_the_models_own(tiny_model, layers: list[int]) -> None:
    """Stopping after the last hook leaves every captured layer's values those of a whole pass."""
    ids, _ = batch_inputs(tiny_model, windows(0, tiny_model.bridge.cfg.d_vocab))
    with torch.inference_mode():
        _, cache = tiny_model.bridge.run_with_cache(ids)
    got = neuron_activations(tiny_model, ids, layers)
    assert sorted(got) == layers
    for layer in layers:
        assert torch.equal(got[layer], cache[tiny_model.neuron_hook(layer)][:, 1:, :])


@pytest.mark.parametrize("to_end", [False, True])
def test_the_pass_stops_once_every_hook_has_run(tiny_model, to_end: bool) -> None:
    """The unembedding (the most arithmetic after the last layer) runs only with `to_end`; a
    hook registered beside the neuron hooks still runs, wherever it sits."""
    ids, _ = batch_inputs(tiny_model, windows(1, tiny_model.bridge.cfg.d_vocab))
    ran: list[str] = []
    unembedded = tiny_model.bridge.unembed.register_forward_hook(lambda *_: ran.append("unembed"))
    layers = list(range(tiny_model.n_layers))
    extra = [(f"blocks.{layers[-1]}.hook_resid_post", lambda x, hook: ran.append("resid_post"))]
    try:
        got = neuron_activations(tiny_model, ids, layers, extra_hooks=extra, to_end=to_end)
    finally:
        unembedded.remove()
    assert sorted(got) == layers
    assert ran == (["resid_post", "unembed"] if to_end else ["resid_post"])
    with torch.inference_mode():  # the stopped pass left no hook registered
        tiny_model.bridge(ids)
    assert len(ran) == (2 if to_end else 1)
